"""Preference losses for a denoising policy against a frozen reference, and their registry.

A loss takes the trained ``model``, the frozen ``ref``, a :class:`PairBatch` and the run's
:class:`LossConfig`, and returns ``(loss, info)``; ``info`` holds floats for TensorBoard.
Add one with :func:`register_loss`; ``dpft finetune dpo --loss NAME`` then finds it.

- ``diffusion-dpo`` (Wallace et al., 2023), the ELBO form: the same time and the same noise for
  both members of a pair, denoising errors of the model and the reference,
  ``-log sigma(-beta * ((e_w - e_ref,w) - (e_l - e_ref,l)))``. For a flow policy the errors are
  velocity errors; nothing else changes. For trajectory pairs the error difference is averaged
  over the chunks compared (the trajectory's sum over its chunks divided by their number, so
  beta does not depend on episode length).
- ``d3po`` (Yang et al., 2024): exact Gaussian log-probabilities of the stored sampler chain
  under the model and the reference, one term per denoising step, the ratio clamped to
  ``[1 - clip, 1 + clip]`` as D3PO does. Needs preference data collected with
  ``--sampler stochastic``.
- ``filtered-bc``: plain BC on the preferred members only: the comparator that needs no
  preferences, only a filter.

``bc_weight`` adds the denoising loss of the model on the preferred chunks to any of them: it
keeps both likelihoods from falling together (the "likelihood displacement" of DPO).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from dpft.base_policies.infra.errors import ConfigError
from dpft.base_policies.policy import DenoisingPolicy


@dataclass
class PairBatch:
    """Matched samples of the preferred (``w``) and the other (``l``) members: ``n = pairs * per_pair``
    rows, row ``i`` of ``w`` paired with row ``i`` of ``l``. ``pair`` maps a row to its pair."""

    obs_w: torch.Tensor  # [n, To, D]
    chunk_w: torch.Tensor  # [n, H, A] env units
    obs_l: torch.Tensor
    chunk_l: torch.Tensor
    pair: torch.Tensor  # [n] long
    pairs: int
    chain_w: torch.Tensor | None = None  # [n, K+1, H, A] normalised (d3po)
    chain_l: torch.Tensor | None = None
    t: torch.Tensor | None = None  # [n] denoising times shared by both members (drawn when None)
    noise: torch.Tensor | None = None  # [n, *noise_shape]

    def part(self, rank: int, world: int) -> PairBatch:
        """Process ``rank``'s equal share of the pairs (with their rows, times and noise): the
        mean of the shares' losses is the whole batch's loss, so averaging their gradients over
        the processes gives the gradient of one process on the whole batch."""
        if world == 1:
            return self
        size = self.pairs // world
        per_pair = self.pair.shape[0] // self.pairs
        rows = slice(rank * size * per_pair, (rank + 1) * size * per_pair)

        def cut(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[rows]

        return PairBatch(
            obs_w=self.obs_w[rows],
            chunk_w=self.chunk_w[rows],
            obs_l=self.obs_l[rows],
            chunk_l=self.chunk_l[rows],
            pair=self.pair[rows] - rank * size,
            pairs=size,
            chain_w=cut(self.chain_w),
            chain_l=cut(self.chain_l),
            t=cut(self.t),
            noise=cut(self.noise),
        )


@dataclass
class LossConfig:
    beta: float
    bc_weight: float
    clip: float
    noise_level: float | None
    generator: torch.Generator | None = None


LossFn = Callable[[DenoisingPolicy, DenoisingPolicy, PairBatch, LossConfig], tuple[torch.Tensor, dict[str, float]]]
LOSSES: dict[str, LossFn] = {}
NEEDS_CHAINS: set[str] = set()


def register_loss(name: str, needs_chains: bool = False) -> Callable[[LossFn], LossFn]:
    def deco(fn: LossFn) -> LossFn:
        LOSSES[name] = fn
        if needs_chains:
            NEEDS_CHAINS.add(name)
        return fn

    return deco


def get_loss(name: str) -> LossFn:
    if name not in LOSSES:
        raise ConfigError(f"unknown --loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]


def _per_pair(x: torch.Tensor, b: PairBatch) -> torch.Tensor:
    """Mean of row values per pair: ``[n] -> [pairs]``."""
    total = torch.zeros(b.pairs, device=x.device, dtype=x.dtype).index_add_(0, b.pair, x)
    count = torch.zeros(b.pairs, device=x.device, dtype=x.dtype).index_add_(0, b.pair, torch.ones_like(x))
    return total / count.clamp(min=1)


def draw_times_noise(model: DenoisingPolicy, b: PairBatch, generator: torch.Generator | None) -> PairBatch:
    """``b`` with the denoising times and noise of every row drawn (the draws a loss would make
    itself), so that the processes of a data-parallel run can each take their rows of one draw."""
    n = b.chunk_w.shape[0]
    t = model.sample_times(n, generator)
    where = generator.device if generator is not None else model.device
    # the model's noise shape: a LeRobot model's covers past steps the recorded chunk does not have
    noise = torch.randn((n, *model.noise_shape), generator=generator, device=where).to(model.device)
    return replace(b, t=t, noise=noise)


def _times_noise(model: DenoisingPolicy, b: PairBatch, cfg: LossConfig) -> tuple[torch.Tensor, torch.Tensor]:
    if b.t is None or b.noise is None:
        b = draw_times_noise(model, b, cfg.generator)
    return b.t, b.noise


@register_loss("diffusion-dpo")
def diffusion_dpo(model, ref, b: PairBatch, cfg: LossConfig):
    t, noise = _times_noise(model, b, cfg)  # shared by the two members of each row
    e_w = model.denoising_loss(b.obs_w, b.chunk_w, t, noise)
    e_l = model.denoising_loss(b.obs_l, b.chunk_l, t, noise)
    with torch.no_grad():
        r_w = ref.denoising_loss(b.obs_w, b.chunk_w, t, noise)
        r_l = ref.denoising_loss(b.obs_l, b.chunk_l, t, noise)
    d = _per_pair((e_w - r_w) - (e_l - r_l), b)
    logits = -cfg.beta * d
    loss = -F.logsigmoid(logits).mean()
    bc = e_w.mean()
    total = loss + cfg.bc_weight * bc if cfg.bc_weight else loss
    return total, {
        "dpo_loss": loss.item(),
        "bc_loss": bc.item(),
        "accuracy": (logits > 0).float().mean().item(),
        "margin": logits.mean().item(),
        "model_err_chosen": e_w.mean().item(),
        "model_err_rejected": e_l.mean().item(),
        "ref_err_chosen": r_w.mean().item(),
        "ref_err_rejected": r_l.mean().item(),
    }


@register_loss("d3po", needs_chains=True)
def d3po(model, ref, b: PairBatch, cfg: LossConfig):
    if b.chain_w is None or b.chain_l is None:
        raise ConfigError("--loss d3po needs the sampler chains: collect with --sampler stochastic")
    lp_w = model.chain_log_prob(b.obs_w, b.chain_w, cfg.noise_level)  # [n, K]
    lp_l = model.chain_log_prob(b.obs_l, b.chain_l, cfg.noise_level)
    with torch.no_grad():
        ref_w = ref.chain_log_prob(b.obs_w, b.chain_w, cfg.noise_level)
        ref_l = ref.chain_log_prob(b.obs_l, b.chain_l, cfg.noise_level)
    lo, hi = torch.log1p(torch.tensor(-cfg.clip)).item(), torch.log1p(torch.tensor(cfg.clip)).item()
    ratio_w = (lp_w - ref_w).clamp(lo, hi)
    ratio_l = (lp_l - ref_l).clamp(lo, hi)
    logits = cfg.beta * (ratio_w - ratio_l)  # one term per row and denoising step
    loss = -F.logsigmoid(logits).mean()
    t, noise = _times_noise(model, b, cfg)
    bc = model.denoising_loss(b.obs_w, b.chunk_w, t, noise).mean() if cfg.bc_weight else torch.zeros(())
    total = loss + cfg.bc_weight * bc if cfg.bc_weight else loss
    return total, {
        "dpo_loss": loss.item(),
        "bc_loss": bc.item(),
        "accuracy": (logits.mean(1) > 0).float().mean().item(),
        "margin": logits.mean().item(),
        "model_logp_chosen": lp_w.sum(1).mean().item(),
        "model_logp_rejected": lp_l.sum(1).mean().item(),
        "ref_logp_chosen": ref_w.sum(1).mean().item(),
        "ref_logp_rejected": ref_l.sum(1).mean().item(),
        "clipped_fraction": ((lp_w - ref_w).abs() > hi).float().mean().item(),
    }


@register_loss("filtered-bc")
def filtered_bc(model, ref, b: PairBatch, cfg: LossConfig):
    t, noise = _times_noise(model, b, cfg)
    e_w = model.denoising_loss(b.obs_w, b.chunk_w, t, noise)
    loss = e_w.mean()
    return loss, {"bc_loss": loss.item(), "model_err_chosen": loss.item()}
