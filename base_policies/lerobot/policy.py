"""A LeRobot diffusion policy as a dpft :class:`DenoisingPolicy`.

``load_policy("lerobot:PATH")`` returns this class, so DSRL, residual RL, DPO and ``dpft eval``
use a LeRobot checkpoint unchanged. What it reproduces of LeRobot, and what it maps:

- **Chunks.** LeRobot's model generates ``horizon`` actions that start ``n_obs_steps - 1`` steps
  in the past and executes ``n_action_steps`` of them from the current step. Here the initial
  noise is LeRobot's (``[horizon, action_dim]``), ``predict_chunk`` returns the actions from the
  current step on (``pred_horizon = horizon - n_obs_steps + 1``), and ``action_horizon =
  n_action_steps``; its first ``n_action_steps`` actions are LeRobot's chunk.
- **Observations.** dpft's flat task observation is split as ``[observation.state,
  observation.environment_state]`` (the sizes come from the LeRobot config), each normalised as
  LeRobot does, and the history is padded at the start of an episode by repeating the first
  observation, as LeRobot's observation queue does.
- **Sampler.** ``predict_chunk`` runs DDIM with eta = 0 on the policy's own noise schedule and
  inference steps. For a DDIM policy that is LeRobot's sampler; a DDPM policy is stochastic in
  LeRobot even given the initial noise, so dpft's deterministic map for it is DDIM on the same
  levels. The stochastic chain (``sample_chain``, used by DPO-style fine-tuning) is LeRobot's own
  step: DDPM's posterior for a DDPM policy (given the per-step noise LeRobot drew, and none at the
  last step, where LeRobot adds none, it reproduces LeRobot's DDPM samples), DDIM with eta =
  ``noise_level`` for a DDIM policy. As for dpft's own policies, the last step gets a std of
  ``1e-2 * noise_level`` so its log-probability is finite; a chain sampled with noise there (DPO's
  collection) ends 1e-2 x N(0, 1) away from LeRobot's.
- **Training loss** (``denoising_loss``) is LeRobot's ``compute_loss`` on a full-horizon chunk.
  A dpft preference pair records only the executed part; the ``n_obs_steps - 1`` past positions
  are then filled with the chunk's first action and left out of the loss.

Saved as a dpft folder (``config.json`` + the LeRobot folder in ``lerobot/``), so a fine-tuned
policy is still a LeRobot folder inside; ``dpft export lerobot`` writes it out on its own.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dpft.base_policies.config import ArchConfig, PolicyConfig
from dpft.base_policies.infra.errors import CheckpointError
from dpft.base_policies.infra.state_io import atomic_dir
from dpft.base_policies.lerobot.folder import (
    ACTION,
    ENV_STATE,
    STATE,
    SUPPORTED,
    LeRobotFolder,
    read_folder,
    write_folder,
)
from dpft.base_policies.lerobot.lerobot_normalize import LeRobotNormalizer
from dpft.base_policies.lerobot.schedule import alphas_cumprod, leading_timesteps
from dpft.base_policies.lerobot.unet import LeRobotUnet1d
from dpft.base_policies.policy import FORMAT_VERSION, DenoisingPolicy, register_policy
from dpft.base_policies.weights import load_state

FOLDER = "lerobot"


@register_policy("lerobot-diffusion")
class LeRobotDiffusionPolicy(DenoisingPolicy):
    """See the module docstring."""

    default_noise_level = 1.0  # the scheduler's own chain: DDPM, or DDIM with eta = 1

    def __init__(self, folder: LeRobotFolder, task: str | None = None, provenance: dict | None = None) -> None:
        nn.Module.__init__(self)  # not DenoisingPolicy.__init__: the network and normalisers are LeRobot's
        c = folder.config
        self.state_dim, self.env_state_dim = folder.state_dim, folder.env_state_dim
        self.obs_dim, self.action_dim = self.state_dim + self.env_state_dim, folder.action_dim
        self.horizon, self.start = c["horizon"], c["n_obs_steps"] - 1
        self.obs_horizon, self.pred_horizon = c["n_obs_steps"], c["horizon"] - self.start
        self.action_horizon = c["n_action_steps"]
        self.scheduler, self.prediction = c["noise_scheduler_type"], c["prediction_type"]
        self.clip_range = float(c["clip_sample_range"]) if c["clip_sample"] else None
        arch = ArchConfig(
            obs_horizon=self.obs_horizon,
            pred_horizon=self.pred_horizon,
            action_horizon=self.action_horizon,
            unet_dims=tuple(c["down_dims"]),
            kernel_size=c["kernel_size"],
            time_embed_dim=c["diffusion_step_embed_dim"],
            num_train_steps=c["num_train_timesteps"],
            num_inference_steps=folder.num_inference_steps,
            clip_sample=bool(c["clip_sample"]),
        )
        self.config = PolicyConfig(
            type=self.type_name, backbone="lerobot-unet", obs_dim=self.obs_dim, action_dim=self.action_dim,
            arch=arch, task=task, provenance=provenance,
        )  # fmt: skip
        norm = {k: LeRobotNormalizer(folder.norm_mode(k), folder.stats.get(k, {}), folder.layout, folder.eps[k])
                for k in (STATE, ENV_STATE, ACTION) if k in c["input_features"] | c["output_features"]}  # fmt: skip
        self.state_normalizer = norm[STATE]
        self.env_state_normalizer = norm.get(ENV_STATE)
        self.action_normalizer = norm[ACTION]
        cond_dim = self.obs_dim * self.obs_horizon
        self.denoiser = LeRobotUnet1d(
            self.action_dim, cond_dim, tuple(c["down_dims"]), c["kernel_size"], c["n_groups"],
            c["diffusion_step_embed_dim"], c["use_film_scale_modulation"],
        )  # fmt: skip
        load_state(self.denoiser, folder.unet, Path("model.safetensors (diffusion.unet.*)"))
        self.lerobot = replace(folder, unet={})  # the weights live in the denoiser now (not twice in memory)
        ab = alphas_cumprod(c["beta_schedule"], c["num_train_timesteps"], c["beta_start"], c["beta_end"])
        self.register_buffer("alphas_cumprod", ab, persistent=False)
        self.register_buffer("timesteps", leading_timesteps(c["num_train_timesteps"], arch.num_inference_steps), False)
        self.stride = c["num_train_timesteps"] // arch.num_inference_steps

    @property
    def noise_shape(self) -> tuple[int, int]:
        """LeRobot's initial noise covers the whole horizon, past positions included."""
        return (self.horizon, self.action_dim)

    def describe_inputs(self) -> str:
        env = f" + observation.environment_state ({self.env_state_dim})" if self.env_state_dim else ""
        return f"LeRobot observation.state ({self.state_dim}){env}"

    # ----- conditioning and units ---------------------------------------------------
    def condition(self, obs: torch.Tensor) -> torch.Tensor:
        h = self.obs_history(obs)
        parts = [self.state_normalizer.normalize(h[..., : self.state_dim])]
        if self.env_state_normalizer is not None:
            parts.append(self.env_state_normalizer.normalize(h[..., self.state_dim :]))
        return torch.cat(parts, dim=-1).flatten(start_dim=1)

    def to_env_units(self, x: torch.Tensor) -> torch.Tensor:
        """The executable part of a normalised full-horizon sample, in environment units."""
        return self.action_normalizer.unnormalize(x[:, self.start : self.start + self.pred_horizon])

    def fit_normalizers(self, obs: torch.Tensor, actions: torch.Tensor) -> None:
        raise NotImplementedError("a LeRobot policy keeps the normaliser statistics it was trained with")

    # ----- the scheduler ------------------------------------------------------------
    def _denoise(self, cond, x, t):
        """(clean-sample estimate, noise estimate, alpha-bar at t, alpha-bar at the next level)."""
        ab = self.alphas_cumprod[t].view(-1, 1, 1)
        prev = t - self.stride
        ab_prev = torch.where(prev >= 0, self.alphas_cumprod[prev.clamp(min=0)], 1.0).view(-1, 1, 1)
        out = self.denoiser(x, t, cond)
        if self.prediction == "epsilon":
            x0, eps = (x - (1 - ab) ** 0.5 * out) / ab**0.5, out
        else:
            x0 = out
            eps = (x - ab**0.5 * x0) / (1 - ab) ** 0.5
        if self.clip_range is not None:
            x0 = x0.clamp(-self.clip_range, self.clip_range)
        return x0, eps, ab, ab_prev

    def step(self, cond, x, t):
        """DDIM, eta = 0: LeRobot's DDIM step (and dpft's deterministic map for a DDPM policy)."""
        x0, eps, _, ab_prev = self._denoise(cond, x, t)
        return ab_prev**0.5 * x0 + (1 - ab_prev) ** 0.5 * eps

    def step_mean_std(self, cond, x, t, noise_level):
        """The scheduler's own stochastic step, its std scaled by ``noise_level``. The last step
        has zero variance; a std of ``1e-2 * noise_level`` there keeps its log-prob finite (and
        the chain equal to LeRobot's when that step's noise is zero). Small stds of other steps
        are kept as they are: flooring them would change the samples."""
        x0, eps, ab, ab_prev = self._denoise(cond, x, t)
        if self.scheduler == "DDPM":
            alpha = ab / ab_prev
            mean = (ab_prev**0.5 * (1 - alpha)) / (1 - ab) * x0 + alpha**0.5 * (1 - ab_prev) / (1 - ab) * x
            var = ((1 - ab_prev) / (1 - ab) * (1 - alpha)).clamp(min=1e-20)
            std = noise_level * torch.where((t > 0).view(-1, 1, 1), var.sqrt(), 0.0)
        else:
            var = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
            std = noise_level * var.clamp(min=0).sqrt()
            mean = ab_prev**0.5 * x0 + (1 - ab_prev - std**2).clamp(min=0).sqrt() * eps
        return mean, torch.where(std > 0, std, 1e-2 * noise_level)

    # ----- training -----------------------------------------------------------------
    def sample_times(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        where = generator.device if generator is not None else self.device
        steps = self.config.arch.num_train_steps
        return torch.randint(0, steps, (batch,), generator=generator, device=where).to(self.device)

    def denoising_loss(self, obs, actions, t, noise):
        """LeRobot's ``compute_loss`` per sample for ``actions`` ``[B, horizon, A]``; for an executed
        chunk ``[B, pred_horizon, A]`` the past positions are filled and not scored (module docstring)."""
        x0 = self.action_normalizer.normalize(torch.as_tensor(actions, dtype=torch.float32, device=self.device))
        scored = slice(0, self.horizon)
        if x0.shape[1] != self.horizon:
            if x0.shape[1] != self.pred_horizon:
                raise CheckpointError(f"chunk of {x0.shape[1]} actions; this policy takes {self.pred_horizon}")
            x0 = torch.cat([x0[:, :1].expand(-1, self.start, -1), x0], dim=1)
            scored = slice(self.start, self.horizon)
        noise = self.check_noise(torch.as_tensor(noise), x0.shape[0])  # [B, horizon, A], past steps included
        ab = self.alphas_cumprod[t].view(-1, 1, 1)
        xt = ab**0.5 * x0 + (1 - ab) ** 0.5 * noise
        pred = self.denoiser(xt, t, self.condition(obs))
        target = noise if self.prediction == "epsilon" else x0
        return ((pred - target) ** 2)[:, scored].mean(dim=(1, 2))

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss with fresh steps and noise of the model's (full-horizon) shape."""
        t = self.sample_times(actions.shape[0])
        noise = torch.randn((actions.shape[0], *self.noise_shape), device=self.device)
        loss = self.denoising_loss(obs, actions, t, noise).mean()
        return loss, {"loss": loss.item()}

    # ----- folder -------------------------------------------------------------------
    def unet_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.denoiser.state_dict().items()}

    def export(self, path: Path) -> None:
        """Write the LeRobot folder (current U-Net weights, everything else as read)."""
        write_folder(self.lerobot, self.unet_state(), Path(path))

    def save(self, path: Path) -> None:
        meta: dict[str, Any] = {
            "type": self.type_name,
            "format_version": FORMAT_VERSION,
            "lerobot_folder": FOLDER,
            "lerobot_layout": self.lerobot.layout,
            "task": self.config.task,
            "provenance": self.config.provenance,
        }
        with atomic_dir(Path(path)) as tmp:
            (tmp / "config.json").write_text(json.dumps(meta, indent=2))
            self.export(tmp / FOLDER)

    @classmethod
    def from_folder(cls, path: Path, meta: dict[str, Any]) -> LeRobotDiffusionPolicy:
        """A dpft folder written by :meth:`save`."""
        inner = meta.get("lerobot_folder")
        if not isinstance(inner, str):
            raise CheckpointError(f"{path / 'config.json'} names no lerobot_folder; re-save the policy")
        return load_lerobot(path / inner, task=meta.get("task"), provenance=meta.get("provenance"))


def load_lerobot(path: str | Path, task: str | None = None, provenance: dict | None = None) -> LeRobotDiffusionPolicy:
    """``lerobot:PATH``: a LeRobot ``pretrained_model/`` folder (or the checkpoint folder around it).

    :func:`read_folder` names every problem it checks for; anything else a malformed folder
    raises on the way (a value of an unexpected type deep in a config) still ends in one
    :class:`CheckpointError`, never a traceback."""
    try:
        policy = LeRobotDiffusionPolicy(read_folder(path), task=task, provenance=provenance).eval()
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as e:
        raise CheckpointError(
            f"could not read the LeRobot policy in {path} ({type(e).__name__}: {e}); {SUPPORTED}"
        ) from None
    if policy.scheduler == "DDPM":
        print(
            f"note: {path} is a DDPM policy: LeRobot samples it stochastically, dpft maps a noise to a chunk "
            "with deterministic DDIM on the same noise levels, so scores can differ from LeRobot's",
            file=sys.stderr,
        )
    return policy
