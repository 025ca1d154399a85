"""Preference pairs as tensors: every decision of every rollout, and batches of matched rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dpft.base_policies.policy import DenoisingPolicy
from dpft.finetune.dpo.losses import PairBatch
from dpft.finetune.dpo.prefs import Prefs, PrefsError


class PairData:
    """Every decision of every rollout as one tensor, and the labelled pairs as index arrays, so a
    batch is a few gathers."""

    def __init__(
        self, prefs: Prefs, device: torch.device, needs_chains: bool, flip: float = 0.0, seed: int = 0
    ) -> None:
        ids = list(prefs.rollouts)
        pos = {rid: i for i, rid in enumerate(ids)}
        rs = [prefs.rollouts[rid] for rid in ids]
        lengths = torch.tensor([len(r.chunks) for r in rs])
        self.offset = torch.cumsum(lengths, 0) - lengths
        self.length = lengths
        self.start = torch.tensor([r.start_decision for r in rs])
        self.obs = torch.from_numpy(np.concatenate([r.obs for r in rs])).float().to(device)
        self.chunks = torch.from_numpy(np.concatenate([r.chunks for r in rs])).float().to(device)
        self.chains = None
        if needs_chains:
            if any(r.chains is None for r in rs):
                raise PrefsError("--loss d3po needs the sampler chains: collect the pairs with --sampler stochastic")
            self.chains = torch.from_numpy(np.concatenate([r.chains for r in rs])).float().to(device)
        usable = [(p, p.preferred()) for p in prefs.pairs]
        usable = [(p, wl) for p, wl in usable if wl is not None]
        if not usable:
            raise PrefsError(
                "the preference data holds no usable pair (all ties or unlabelled): collect more start states or "
                "streams, "
                "or label the pairs with `dpft prefs label`"
            )
        if flip:  # one draw per pair in file order: a pair keeps its flip as later rounds add pairs
            flips = np.random.default_rng(seed).random(len(usable)) < flip
            usable = [(p, (wl[1], wl[0]) if f else wl) for (p, wl), f in zip(usable, flips)]
        self.w = torch.tensor([pos[wl[0]] for _, wl in usable])
        self.l = torch.tensor([pos[wl[1]] for _, wl in usable])
        self.chunk_kind = torch.tensor([p.kind == "chunk" for p, _ in usable])
        self.pairs = len(usable)

    def sample(self, pairs: int, per_pair: int, gen: torch.Generator, shared_index: bool) -> PairBatch:
        """``pairs`` random pairs, ``per_pair`` matched decisions each: a chunk pair's branch
        decision, a trajectory pair's random decisions (the same index in both members when
        ``shared_index``: D3PO's members share each decision's initial noise)."""
        p = torch.randint(0, self.pairs, (pairs,), generator=gen).repeat_interleave(per_pair)
        w, lo, chunk = self.w[p], self.l[p], self.chunk_kind[p]
        u_w, u_l = torch.rand(len(p), generator=gen), torch.rand(len(p), generator=gen)
        if shared_index:
            n = torch.minimum(self.length[w], self.length[lo])
            i_w = i_l = (u_w * n).long()
        else:
            i_w, i_l = (u_w * self.length[w]).long(), (u_l * self.length[lo]).long()
        i_w = torch.where(chunk, self.start[w], i_w)
        i_l = torch.where(chunk, self.start[lo], i_l)
        rows_w, rows_l = self.offset[w] + i_w, self.offset[lo] + i_l
        dev = self.obs.device
        rows_w, rows_l = rows_w.to(dev), rows_l.to(dev)
        return PairBatch(
            obs_w=self.obs[rows_w],
            chunk_w=self.chunks[rows_w],
            obs_l=self.obs[rows_l],
            chunk_l=self.chunks[rows_l],
            pair=torch.arange(pairs).repeat_interleave(per_pair).to(dev),
            pairs=pairs,
            chain_w=None if self.chains is None else self.chains[rows_w],
            chain_l=None if self.chains is None else self.chains[rows_l],
        )


def check_chains(path: Path, prefs: Prefs, policy: DenoisingPolicy, noise_level: float | None) -> None:
    """Chains are scored under the policy's own sampler: same number of steps, same noise level."""
    steps, level = int(prefs.meta.get("denoising_steps", -1)), prefs.meta.get("noise_level", None)
    want = policy.default_noise_level if noise_level is None else noise_level
    if prefs.meta.get("sampler") != "stochastic" or level in (None, ""):
        raise PrefsError(
            f"{path} was collected with the {prefs.meta.get('sampler', 'ddim')} sampler, which keeps no denoising "
            "chains; d3po scores chains: collect with `dpft prefs collect ... --sampler stochastic`, or use "
            "--loss diffusion-dpo"
        )
    if steps != len(policy.timesteps):
        raise PrefsError(
            f"{path} holds chains of {steps} denoising steps but the policy samples with {len(policy.timesteps)}"
        )
    if level is None or float(level) != float(want):
        raise PrefsError(
            f"{path} was sampled at noise level {level} but d3po would score it at {want}; pass --noise-level {level}"
        )
