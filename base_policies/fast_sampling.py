"""The fast path of ``predict_chunk`` for MLP denoisers on the CPU: one captured graph per sampler.

At batch 1 a 10-step chunk of the shipped 0.5M-parameter MLP policy costs ~10 ms in eager
PyTorch, where the arithmetic is a few hundred microseconds: the time goes into the ~40
operator calls of every denoising step (the sinusoidal time embedding, the time MLP, the
concatenation, the schedule's per-step tensors, module calls). This module removes what does
not depend on the noisy chunk and captures the rest once:

- the time embedding and its share of the input layer are the same for every chunk: one
  ``[S, hidden]`` table per call (S network evaluations);
- the observation's share of the input layer is computed once per chunk, not once per step;
- the schedule's coefficients are Python floats baked into the graph;
- the K steps are traced once (``torch.jit.trace``) into one graph whose inputs are the weights,
  so the graph never holds stale weights (preference fine-tuning changes them in place).

The result equals the eager sampler to float32 rounding (the input layer's sum runs in another
order): ``tests/test_fast_sampling.py`` states the tolerance. ``DPFT_FAST_SAMPLER=0`` turns it off.
It is used only where it was measured to pay: CPU tensors, no autograd, the ``mlp`` backbone.
Speed: ``experiments/results/latency.md``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dpft.base_policies.backbones import ResidualMLP


@dataclass(frozen=True)
class SamplerPlan:
    """What a sampler does per denoising step, in numbers the graph can bake in.

    ``kind`` is ``"ddim"`` (``coefs[k] = (sqrt(1 - ab), sqrt(ab), sqrt(ab_prev),
    sqrt(1 - ab_prev))`` in float32, eta = 0) or ``"euler"`` / ``"midpoint"`` (flow, step ``dt``);
    ``time_inputs`` are the denoiser's time inputs of the S network evaluations in order
    (K for DDIM and Euler, 2K for midpoint)."""

    kind: str
    time_inputs: tuple[float, ...]
    coefs: tuple[tuple[float, float, float, float], ...] = ()
    dt: float = 0.0
    clip_x0: bool = False


def enabled() -> bool:
    return os.environ.get("DPFT_FAST_SAMPLER", "1") != "0"


def _mlp_weights(net: ResidualMLP, x_dim: int, time_dim: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The per-step weights (input layer's chunk columns, blocks, output) and the condition's columns."""
    w = net.inp.weight
    weights = [w[:, :x_dim].t()]
    for block in net.blocks:
        ln, lin1, _, lin2 = block.net
        weights += [ln.weight, ln.bias, lin1.weight, lin1.bias, lin2.weight, lin2.bias]
    ln, lin = net.out
    weights += [ln.weight, ln.bias, lin.weight, lin.bias]
    return weights, w[:, x_dim + time_dim :]


def _loop(plan: SamplerPlan, num_blocks: int, eps_ln: float) -> Callable[..., torch.Tensor]:
    """The sampler as a plain function of (flat noise, condition term, time table, weights)."""

    def net(x: torch.Tensor, bias: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
        h = torch.addmm(bias, x, weights[0])
        for b in range(num_blocks):
            lw, lb, w1, b1, w2, b2 = weights[1 + 6 * b : 7 + 6 * b]
            h = h + F.linear(F.silu(F.linear(F.layer_norm(h, lw.shape, lw, lb, eps_ln), w1, b1)), w2, b2)
        lw, lb, wo, bo = weights[1 + 6 * num_blocks :]
        return F.linear(F.layer_norm(h, lw.shape, lw, lb, eps_ln), wo, bo)

    def loop(x: torch.Tensor, cond_term: torch.Tensor, time_table: torch.Tensor, *weights: torch.Tensor):
        weights = list(weights)
        if plan.kind == "ddim":
            for k, (s1, s2, s3, s4) in enumerate(plan.coefs):
                eps = net(x, cond_term + time_table[k], weights)
                x0 = (x - s1 * eps) / s2
                if plan.clip_x0:
                    x0 = x0.clamp(-1.0, 1.0)
                x = s3 * x0 + s4 * eps
        elif plan.kind == "euler":
            for k in range(len(plan.time_inputs)):
                x = x + plan.dt * net(x, cond_term + time_table[k], weights)
        else:  # midpoint: two evaluations per step
            for k in range(len(plan.time_inputs) // 2):
                v = net(x, cond_term + time_table[2 * k], weights)
                v = net(x + 0.5 * plan.dt * v, cond_term + time_table[2 * k + 1], weights)
                x = x + plan.dt * v
        return x

    return loop


class FastMLPSampler:
    """``sampler(cond [B, C], noise [B, H, A]) -> normalised chunk [B, H, A]`` for a
    :class:`ResidualMLP` denoiser, with the graph traced at the first call (None, and the eager
    loop from then on, if tracing fails)."""

    def __init__(self, net: ResidualMLP, plan: SamplerPlan, time_dim: int) -> None:
        self.net, self.plan = net, plan
        self.x_dim, self.time_dim = net.horizon * net.action_dim, time_dim
        self._fn = _loop(plan, len(net.blocks), net.out[0].eps)
        self._graph = None
        self.failed = False
        self._table: tuple[tuple, torch.Tensor] | None = None

    def time_table(self) -> torch.Tensor:
        """``[S, hidden]``: the time embedding's share of the input layer (plus its bias) for each
        network evaluation; recomputed only when a weight it depends on changed in place."""
        net = self.net
        params = (*net.time.parameters(), net.inp.weight, net.inp.bias)
        key = tuple((p.data_ptr(), p._version) for p in params)
        if self._table is None or self._table[0] != key:
            times = torch.tensor(self.plan.time_inputs, dtype=torch.float32, device=net.inp.weight.device)
            cols = net.inp.weight[:, self.x_dim : self.x_dim + self.time_dim]
            self._table = (key, torch.addmm(net.inp.bias, net.time(times), cols.t()))
        return self._table[1]

    def __call__(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        weights, cond_w = _mlp_weights(self.net, self.x_dim, self.time_dim)
        time_table = self.time_table()
        cond_term = cond @ cond_w.t()
        x = noise.reshape(noise.shape[0], self.x_dim)
        if self._graph is None:
            try:
                with warnings.catch_warnings():  # the trace is shape-generic; its notes on Python floats are expected
                    warnings.simplefilter("ignore")
                    self._graph = torch.jit.trace(self._fn, (x, cond_term, time_table, *weights), check_trace=False)
            except Exception as e:  # a torch without a working tracer: the eager loop, said once
                self.failed = True
                warnings.warn(
                    f"dpft: the fast sampler could not be traced ({type(e).__name__}: {e}); using the eager loop",
                    stacklevel=2,
                )
                return None
        return self._graph(x, cond_term, time_table, *weights).view_as(noise)


def fast_sampler(policy) -> FastMLPSampler | None:
    """The policy's fast sampler, or None where the eager loop must run (another backbone,
    autograd on, a non-CPU device, ``DPFT_FAST_SAMPLER=0``)."""
    net = policy.denoiser
    if not enabled() or torch.is_grad_enabled() or not isinstance(net, ResidualMLP):
        return None
    if net.inp.weight.device.type != "cpu" or net.inp.weight.dtype != torch.float32:
        return None
    cached = policy.__dict__.get("_fast_sampler")
    if cached is not None and cached.failed:
        return None
    if cached is None:
        cached = FastMLPSampler(net, policy.sampler_plan(), policy.config.arch.time_embed_dim)
        policy.__dict__["_fast_sampler"] = cached  # not a submodule: never saved, never moved
    return cached
