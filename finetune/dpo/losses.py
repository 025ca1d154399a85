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
- ``seppo`` (SePPO, Zhang et al., 2024, arXiv 2410.05255): only the preferred member of each pair
  is data; the other member is replaced by the reference model's own sample at the preferred
  member's observation (on-policy for the reference, drawn fresh every step, see
  :func:`reference_samples`), and the reference is a previous round's policy (the training loop
  draws it, :mod:`.reference`). An anchor decides per pair whether that sample is treated as
  losing or winning: the preferred sample is the anchor, and while the model fits it better than
  the reference does (``e_w - e_ref,w < 0``: the reference is the weaker policy there) the
  reference's sample is taken as losing (the Diffusion-DPO term), otherwise as winning (its term
  enters with the opposite sign, so the model learns from both). Written out, per pair,
  ``-log sigma(-beta * ((e_w - e_ref,w) - I * (e_s - e_ref,s)))`` with
  ``I = +1 if e_w - e_ref,w < 0 else -1`` (no gradient through ``I``). Only the abstracts of the
  paper (v1 and v2, "SSPO") could be read where this was written; the anchor rule is this
  reading of them, not a transcription of the paper's equation.

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
PrepareFn = Callable[[DenoisingPolicy, PairBatch, torch.Generator | None], PairBatch]
LOSSES: dict[str, LossFn] = {}
NEEDS_CHAINS: set[str] = set()
PREPARE: dict[str, PrepareFn] = {}
"""Per loss, what is done to a whole batch (with the reference) before it is split across processes."""


def register_loss(
    name: str, needs_chains: bool = False, prepare: PrepareFn | None = None
) -> Callable[[LossFn], LossFn]:
    def deco(fn: LossFn) -> LossFn:
        LOSSES[name] = fn
        if needs_chains:
            NEEDS_CHAINS.add(name)
        if prepare is not None:
            PREPARE[name] = prepare
        return fn

    return deco


def prepare_batch(name: str, ref: DenoisingPolicy, b: PairBatch, generator: torch.Generator | None) -> PairBatch:
    """The batch a loss trains on: as sampled, or as the loss's ``prepare`` makes it."""
    return PREPARE[name](ref, b, generator) if name in PREPARE else b


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


def _denoising_errors(model, ref, b: PairBatch, cfg: LossConfig) -> tuple[torch.Tensor, ...]:
    """Model and reference denoising errors of both members of each row, at the same times and noise:
    ``(e_w, e_l, e_ref_w, e_ref_l)``, the reference's without a graph."""
    t, noise = _times_noise(model, b, cfg)
    e_w = model.denoising_loss(b.obs_w, b.chunk_w, t, noise)
    e_l = model.denoising_loss(b.obs_l, b.chunk_l, t, noise)
    with torch.no_grad():
        r_w = ref.denoising_loss(b.obs_w, b.chunk_w, t, noise)
        r_l = ref.denoising_loss(b.obs_l, b.chunk_l, t, noise)
    return e_w, e_l, r_w, r_l


@register_loss("diffusion-dpo")
def diffusion_dpo(model, ref, b: PairBatch, cfg: LossConfig):
    e_w, e_l, r_w, r_l = _denoising_errors(model, ref, b, cfg)
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


def reference_samples(ref: DenoisingPolicy, b: PairBatch, generator: torch.Generator | None) -> PairBatch:
    """``b`` with every ``l`` row replaced by the reference's own chunk at the ``w`` row's
    observation, from fresh N(0, I) noise drawn from ``generator`` (the same draw in every process)."""
    with torch.no_grad():
        chunk = ref.predict_chunk(b.obs_w, ref.initial_noise(b.obs_w.shape[0], generator))
    return replace(b, obs_l=b.obs_w, chunk_l=chunk, chain_l=None)


@register_loss("seppo", prepare=reference_samples)
def seppo(model, ref, b: PairBatch, cfg: LossConfig):
    e_w, e_s, r_w, r_s = _denoising_errors(model, ref, b, cfg)  # s: the reference's own sample
    d_w, d_s = _per_pair(e_w - r_w, b), _per_pair(e_s - r_s, b)
    losing = torch.where(d_w.detach() < 0, 1.0, -1.0)  # the anchor: is the reference the weaker policy?
    logits = -cfg.beta * (d_w - losing * d_s)
    loss = -F.logsigmoid(logits).mean()
    bc = e_w.mean()
    total = loss + cfg.bc_weight * bc if cfg.bc_weight else loss
    return total, {
        "dpo_loss": loss.item(),
        "bc_loss": bc.item(),
        "reference_sample_losing": (losing > 0).float().mean().item(),
        "margin": logits.mean().item(),
        "model_err_chosen": e_w.mean().item(),
        "model_err_reference_sample": e_s.mean().item(),
        "ref_err_chosen": r_w.mean().item(),
        "ref_err_reference_sample": r_s.mean().item(),
    }
