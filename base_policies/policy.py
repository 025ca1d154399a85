"""The one interface every policy honours (base, steered or residual-corrected).

Fine-tuning methods treat a policy as a black box ``(observation, initial noise) -> action
chunk``; evaluation, video and the CLI only use this interface, so a fine-tuned artifact is
used exactly like a base policy.
"""

from __future__ import annotations

import abc
import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import save_file
from torch import nn

from dpft.base_policies.backbones import BACKBONES
from dpft.base_policies.config import PolicyConfig
from dpft.base_policies.fast_sampling import SamplerPlan, fast_sampler
from dpft.base_policies.infra.device import module_device
from dpft.base_policies.infra.errors import ConfigError
from dpft.base_policies.infra.records import to_dict
from dpft.base_policies.infra.registry import entry_point_names, load_entry_point
from dpft.base_policies.infra.state_io import atomic_dir
from dpft.base_policies.normalizer import Normalizer
from dpft.base_policies.weights import load_weights, policy_config_from_meta

FORMAT_VERSION = 1

POLICY_TYPES: dict[str, type[Policy]] = {}
ENTRY_POINT_GROUP = "dpft.policies"


def register_policy(name: str):
    """Class decorator: make a policy type loadable by ``load_policy`` under ``name``."""

    def deco(cls):
        cls.type_name = name
        POLICY_TYPES[name] = cls
        return cls

    return deco


def policy_type(name: str) -> type[Policy] | None:
    """The class registered as ``name``, importing it through the ``dpft.policies`` entry points
    if nothing registered it yet (dpft's own types and other packages' types alike)."""
    if name not in POLICY_TYPES:
        load_entry_point(ENTRY_POINT_GROUP, name)
    return POLICY_TYPES.get(name)


def policy_type_names() -> list[str]:
    return sorted(set(POLICY_TYPES) | set(entry_point_names(ENTRY_POINT_GROUP)))


class Policy(nn.Module, abc.ABC):
    """Maps observations (and optionally the initial noise) to action chunks.

    Subclasses set ``obs_dim``, ``action_dim``, ``obs_horizon``, ``pred_horizon``,
    ``action_horizon``, ``action_low`` and ``action_high``.
    """

    type_name: ClassVar[str] = ""
    chooses_noise: ClassVar[bool] = False
    """True when ``predict_chunk(obs)`` without noise picks a deliberate noise (a steered policy)
    rather than drawing N(0, I). A method that runs this policy as its base then leaves the
    noise to it (a residual on top of a DSRL policy keeps the steered noise)."""
    obs_dim: int
    action_dim: int
    obs_horizon: int
    pred_horizon: int
    action_horizon: int

    @property
    def noise_shape(self) -> tuple[int, int]:
        """Shape of the initial noise of one sample: ``(pred_horizon, action_dim)``."""
        return (self.pred_horizon, self.action_dim)

    @property
    def device(self) -> torch.device:
        """Where the policy's weights live; inputs are moved here, outputs are returned here."""
        return module_device(self)

    def initial_noise(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """N(0, I) noise on the policy's device. With a ``generator`` the numbers are drawn on the
        generator's device and moved, so the same generator gives the same noise on any device."""
        where = generator.device if generator is not None else self.device
        return torch.randn((batch, *self.noise_shape), generator=generator, device=where).to(self.device)

    @property
    def stateful(self) -> bool:
        """True when ``predict_chunk`` depends on earlier calls (see :meth:`reset`). Such a policy
        cannot be a black box that other code calls on arbitrary batches (a DSRL or residual base)."""
        return False

    def reset(self, done: torch.Tensor | None = None) -> None:
        """Forget the per-episode state of the batch rows where ``done`` is True (every row when
        ``done`` is None).

        Most policies are stateless: the env wrapper keeps the observation history. A policy
        that is not (a per-step residual, which keeps the base chunk it is executing and its
        position in it) relies on the caller: the rollout loop calls ``reset()`` after the
        vector env's reset and ``reset(done)`` after every step in which some episodes ended,
        so row ``i`` of the next batch starts a new episode exactly when env ``i`` did. A call
        with a different batch size than the last one also starts every row afresh.
        """

    @abc.abstractmethod
    def predict_chunk(
        self, obs: torch.Tensor, noise: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Return ``[B, pred_horizon, action_dim]`` actions in environment units.

        ``obs`` is ``[B, obs_dim]`` or ``[B, obs_horizon, obs_dim]``. Given ``noise``
        (``[B, *noise_shape]``) the result is a deterministic function of (obs, noise).
        """

    @abc.abstractmethod
    def save(self, path: Path) -> None:
        """Write the policy folder (``config.json`` + weights) atomically."""

    def obs_history(self, obs: torch.Tensor) -> torch.Tensor:
        """Bring ``obs`` to ``[B, obs_horizon, obs_dim]``, repeating a single observation
        (the same padding the env wrapper uses at the start of an episode)."""
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        if obs.dim() == 2:
            obs = obs.unsqueeze(1).expand(-1, self.obs_horizon, -1)
        if obs.dim() != 3 or obs.shape[1:] != (self.obs_horizon, self.obs_dim):
            raise ConfigError(
                f"observation shape {tuple(obs.shape)} does not match the policy: expected "
                f"[B, {self.obs_dim}] or [B, {self.obs_horizon}, {self.obs_dim}]"
            )
        return obs

    def check_noise(self, noise: torch.Tensor, batch: int) -> torch.Tensor:
        expected = (batch, *self.noise_shape)
        if tuple(noise.shape) != expected:
            raise ConfigError(f"noise shape {tuple(noise.shape)} does not match the policy: expected {expected}")
        return noise.to(device=self.device, dtype=torch.float32)


class DenoisingPolicy(Policy):
    """Shared parts of diffusion and flow policies: normalisers, backbone, conditioning,
    bounds and the checkpoint folder. Subclasses implement the sampler and the loss."""

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        if config.backbone not in BACKBONES:
            raise ConfigError(f"unknown backbone {config.backbone!r}; choose one of {sorted(BACKBONES)}")
        self.config = config
        a = config.arch
        self.obs_dim, self.action_dim = config.obs_dim, config.action_dim
        self.obs_horizon, self.pred_horizon, self.action_horizon = a.obs_horizon, a.pred_horizon, a.action_horizon
        self.obs_normalizer = Normalizer(config.obs_dim, "gaussian")
        self.action_normalizer = Normalizer(config.action_dim, "minmax")
        self.denoiser = BACKBONES[config.backbone](config)
        lo = config.action_low or (-float("inf"),) * config.action_dim
        hi = config.action_high or (float("inf"),) * config.action_dim
        self.register_buffer("action_low", torch.tensor(lo, dtype=torch.float32), persistent=False)
        self.register_buffer("action_high", torch.tensor(hi, dtype=torch.float32), persistent=False)

    # ----- conditioning -------------------------------------------------------------
    def condition(self, obs: torch.Tensor) -> torch.Tensor:
        """Normalised, flattened observation history ``[B, obs_horizon * obs_dim]``."""
        return self.obs_normalizer.normalize(self.obs_history(obs)).flatten(1)

    def fit_normalizers(self, obs: torch.Tensor, actions: torch.Tensor) -> None:
        self.obs_normalizer.fit(obs)
        self.action_normalizer.fit(actions)

    # ----- sampling -----------------------------------------------------------------
    # The loops over denoising steps live here; a subclass supplies its time grid
    # ``timesteps`` and one step (``step_mean_std``, and ``step`` if its ODE integrator is
    # not the chain's mean).
    timesteps: torch.Tensor
    """``[K]`` buffer: the time input of each of the K denoising steps, from noise to sample."""

    default_noise_level: ClassVar[float] = 1.0
    """Noise level of the stochastic chain when the caller gives none."""

    @abc.abstractmethod
    def step_mean_std(
        self, cond: torch.Tensor, x: torch.Tensor, t: torch.Tensor, noise_level: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``[B, H, A]`` and std (broadcastable to it) of the stochastic chain's next state
        given the state ``x`` at times ``t`` ``[B]``."""

    def step(self, cond: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One step of the deterministic sampler: the chain's mean at noise level 0."""
        return self.step_mean_std(cond, x, t, 0.0)[0]

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised chunk for the sampler's last state (a subclass may clip it)."""
        return x

    def sampler_plan(self) -> SamplerPlan:
        """The deterministic sampler in numbers, for the captured fast path (:mod:`fast_sampling`)."""
        raise NotImplementedError

    def sample(self, cond: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Deterministically map initial noise ``x`` to a normalised chunk given ``cond``.

        Without autograd on the CPU an MLP denoiser runs the captured fast path (the same
        chunk to float32 rounding, several times faster at small batches); this loop is the
        reference it is tested against, and what runs everywhere else."""
        fast = fast_sampler(self)
        if fast is not None and (out := fast(cond, x)) is not None:
            return self.finish(out)
        for t in self.timesteps:
            x = self.step(cond, x, t.expand(x.shape[0]))
        return self.finish(x)

    @torch.no_grad()
    def predict_chunk(
        self, obs: torch.Tensor, noise: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        cond = self.condition(obs)
        noise = self.initial_noise(cond.shape[0], generator) if noise is None else noise
        noise = self.check_noise(torch.as_tensor(noise), cond.shape[0])
        return self.to_env_units(self.sample(cond, noise))

    def to_env_units(self, x: torch.Tensor) -> torch.Tensor:
        """A normalised chunk in environment units, clipped to the action bounds."""
        actions = self.action_normalizer.unnormalize(x)
        return torch.maximum(torch.minimum(actions, self.action_high), self.action_low)

    # ----- training -----------------------------------------------------------------
    @abc.abstractmethod
    def sample_times(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw training times (diffusion step indices or flow times) for ``batch`` samples."""

    @abc.abstractmethod
    def denoising_loss(
        self, obs: torch.Tensor, actions: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample loss ``[B]`` for clean chunks ``actions`` (env units) at times ``t``
        with noise ``noise``. DPO compares this between the policy and a frozen reference."""

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss on a batch with fresh times and noise: ``(loss, info)``."""
        t = self.sample_times(actions.shape[0]).to(actions.device)
        noise = torch.randn_like(actions)
        loss = self.denoising_loss(obs, actions, t, noise).mean()
        return loss, {"loss": loss.item()}

    # ----- stochastic chain (for policy-gradient / DPO-style fine-tuning) -------------
    LOG_2PI: ClassVar[float] = 1.8378770664093453  # math.log(2 * math.pi)

    @staticmethod
    def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """Log-density of ``x`` under N(mean, std^2), summed over the last two dimensions."""
        lp = -0.5 * ((x - mean) / std) ** 2 - torch.log(std) - 0.5 * DenoisingPolicy.LOG_2PI
        return lp.flatten(start_dim=lp.dim() - 2).sum(-1)

    def check_steps(self, tensor: torch.Tensor, batch: int, steps: int, name: str) -> torch.Tensor:
        """``tensor`` as ``[batch, steps, *noise_shape]`` float32 on the policy's device."""
        expected = (batch, steps, *self.noise_shape)
        if tuple(tensor.shape) != expected:
            raise ConfigError(f"{name} shape {tuple(tensor.shape)} does not match the policy: expected {expected}")
        return torch.as_tensor(tensor).to(device=self.device, dtype=torch.float32)

    def sample_chain(
        self, obs: torch.Tensor, noise: torch.Tensor, step_noise: torch.Tensor, noise_level: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stochastic sampler. Returns (actions in env units ``[B, H, A]``, the normalised
        chain ``[B, K+1, H, A]`` from noise to sample, per-step log-probabilities ``[B, K]``).
        ``step_noise`` is ``[B, K, H, A]`` standard-normal noise for the K transitions."""
        noise_level = self.default_noise_level if noise_level is None else noise_level
        cond = self.condition(obs)
        x = self.check_noise(torch.as_tensor(noise), cond.shape[0])
        step_noise = self.check_steps(step_noise, cond.shape[0], len(self.timesteps), "step_noise")
        chain, log_probs = [x], []
        for k, t in enumerate(self.timesteps):
            mean, std = self.step_mean_std(cond, x, t.expand(x.shape[0]), noise_level)
            std = std.expand_as(mean)
            x = mean + std * step_noise[:, k]
            chain.append(x)
            log_probs.append(self.gaussian_log_prob(x, mean, std))
        return self.to_env_units(self.finish(x)), torch.stack(chain, 1), torch.stack(log_probs, 1)

    def chain_log_prob(self, obs: torch.Tensor, chain: torch.Tensor, noise_level: float | None = None) -> torch.Tensor:
        """Per-step log-probabilities ``[B, K]`` of a given chain under the current weights
        (all K steps in one batch of ``B * K``)."""
        noise_level = self.default_noise_level if noise_level is None else noise_level
        cond = self.condition(obs)
        B, K = cond.shape[0], len(self.timesteps)
        chain = self.check_steps(chain, B, K + 1, "chain")
        x, x_next = chain[:, :-1].flatten(0, 1), chain[:, 1:].flatten(0, 1)
        mean, std = self.step_mean_std(cond.repeat_interleave(K, 0), x, self.timesteps.repeat(B), noise_level)
        return self.gaussian_log_prob(x_next, mean, std.expand_as(mean)).view(B, K)

    # ----- checkpoint ---------------------------------------------------------------
    def save(self, path: Path) -> None:
        meta: dict[str, Any] = {"format_version": FORMAT_VERSION, **to_dict(self.config)}
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_dir(Path(path)) as tmp:
            (tmp / "config.json").write_text(json.dumps(meta, indent=2))
            save_file(state, str(tmp / "model.safetensors"))

    @classmethod
    def from_folder(cls, path: Path, meta: dict[str, Any]) -> DenoisingPolicy:
        policy = cls(policy_config_from_meta(path, meta))
        load_weights(policy, path)
        policy.eval()
        return policy
