"""Typed configuration of a denoising policy.

Timing of one decision (obs_horizon=2, pred_horizon=8, action_horizon=4)::

    time step:     t-1   t    t+1  t+2  t+3  t+4  t+5  t+6  t+7
    observations: |o   |o   |                                      obs_horizon = 2
    predicted:          |a   |a   |a   |a   |a   |a   |a   |a   |  pred_horizon = 8
    executed:           |a   |a   |a   |a   |                       action_horizon = 4

The chunk starts at the current step ``t``; the environment wrapper executes the first
``action_horizon`` actions, then asks for a new chunk. At the start of an episode the
observation history is padded by repeating the first observation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from dpft.base_policies.infra.errors import ConfigError
from dpft.base_policies.infra.ranges import check_ranges
from dpft.base_policies.infra.records import check_record, from_dict, to_dict  # noqa: F401 (used below; re-exported)


@dataclass
class ArchConfig:
    """Hyper-parameters a user tunes; everything else is derived from the data."""

    RANGES: ClassVar[dict[str, str]] = {
        "obs_horizon": ">= 1",
        "pred_horizon": ">= 1",
        "action_horizon": ">= 1",
        "hidden_dim": ">= 1",
        "num_blocks": ">= 1",
        "kernel_size": ">= 1",
        "time_embed_dim": ">= 2",
        "num_train_steps": ">= 1",
        "num_inference_steps": ">= 1",
    }
    """Declared range of each numeric setting (dpft.base_policies.infra.ranges)."""

    obs_horizon: int = 2
    """Number of past observations (including the current one) the policy sees."""
    pred_horizon: int = 8
    """Number of actions predicted per chunk (the first dimension of the noise)."""
    action_horizon: int = 4
    """Number of predicted actions executed before the policy is queried again."""
    hidden_dim: int = 256
    """Width of the residual MLP backbone."""
    num_blocks: int = 3
    """Number of residual blocks of the MLP backbone."""
    unet_dims: tuple[int, ...] = (64, 128, 256)
    """Channel widths of the U-Net levels; each level after the first halves the horizon."""
    kernel_size: int = 5
    """Temporal convolution kernel size of the U-Net."""
    time_embed_dim: int = 64
    """Size of the sinusoidal embedding of the diffusion time / flow time."""
    num_train_steps: int = 100
    """Diffusion only: number of DDPM noise levels used in training."""
    num_inference_steps: int = 10
    """Denoising steps at sampling time (DDIM steps for diffusion, ODE steps for flow)."""
    integrator: Literal["euler", "midpoint"] = "euler"
    """Flow only: ODE integrator."""
    clip_sample: bool = True
    """Clip the predicted clean (normalised) action to [-1, 1] while sampling."""


@dataclass
class PolicyConfig:
    """Everything needed to rebuild a policy; written to ``config.json`` in its folder."""

    type: str = "diffusion"
    """Policy type registered in ``base_policies.policy.POLICY_TYPES``."""
    backbone: str = "mlp"
    """Denoiser backbone registered in ``base_policies.backbones.BACKBONES``."""
    obs_dim: int = 1
    """Size of one flat observation."""
    action_dim: int = 1
    """Size of one action."""
    arch: ArchConfig = field(default_factory=ArchConfig)
    """Architecture and sampler hyper-parameters."""
    action_low: tuple[float, ...] | None = None
    """Lower action bound in environment units (sampled actions are clipped to it)."""
    action_high: tuple[float, ...] | None = None
    """Upper action bound in environment units."""
    task: str | None = None
    """Task id the policy was trained for (informational; checked against the env later)."""
    obs_keys: tuple[str, ...] | None = None
    """Observation keys concatenated, in this order, into the flat observation (from a dataset
    whose ``obs`` is a group); None: not recorded (a flat dataset, or an older policy)."""
    provenance: dict[str, Any] | None = None
    """Where fine-tuned weights came from (``dpft finetune dpo``: base, loss, beta, rounds, data
    files); None for a policy trained by BC."""

    added_later: ClassVar[frozenset[str]] = frozenset({"obs_keys", "provenance"})
    """Keys a ``config.json`` may lack (see :func:`check_record`): ``obs_keys`` came after format 1
    was fixed, and its absence means "not recorded", which is exactly what older policies are.
    Every other key has been written by every dpft since format 1, so a missing one is an error."""

    def __post_init__(self) -> None:
        if isinstance(self.arch, dict):
            self.arch = from_dict(ArchConfig, self.arch)
        validate_arch(self.arch, self.backbone)
        if self.obs_dim < 1 or self.action_dim < 1:
            raise ConfigError(f"obs_dim ({self.obs_dim}) and action_dim ({self.action_dim}) must be >= 1")
        for name in ("action_low", "action_high"):
            bound = getattr(self, name)
            if bound is not None:
                if len(bound) != self.action_dim:
                    raise ConfigError(f"{name} has {len(bound)} values but action_dim is {self.action_dim}")
                setattr(self, name, tuple(float(b) for b in bound))
        if self.obs_keys is not None:
            self.obs_keys = tuple(self.obs_keys)

    @property
    def noise_shape(self) -> tuple[int, int]:
        return (self.arch.pred_horizon, self.action_dim)


def validate_arch(arch: ArchConfig, backbone: str) -> None:
    """Raise :class:`ConfigError` with a suggested fix for an inconsistent architecture."""
    check_ranges(arch, "arch.")
    if arch.obs_horizon < 1:
        raise ConfigError(f"obs_horizon ({arch.obs_horizon}) must be >= 1")
    if not 1 <= arch.action_horizon <= arch.pred_horizon:
        raise ConfigError(
            f"action_horizon ({arch.action_horizon}) must be between 1 and pred_horizon ({arch.pred_horizon})"
        )
    if arch.num_inference_steps < 1:
        raise ConfigError(f"num_inference_steps ({arch.num_inference_steps}) must be >= 1")
    if arch.num_inference_steps > arch.num_train_steps:
        raise ConfigError(
            f"num_inference_steps ({arch.num_inference_steps}) cannot exceed num_train_steps ({arch.num_train_steps})"
        )
    if backbone == "unet":
        factor = 2 ** (len(arch.unet_dims) - 1)
        if arch.pred_horizon % factor:
            nxt = -(-arch.pred_horizon // factor) * factor
            raise ConfigError(
                f"pred_horizon ({arch.pred_horizon}) must be a multiple of {factor} for a U-Net with "
                f"{len(arch.unet_dims)} levels; try {arch.pred_horizon} -> {nxt}"
            )
