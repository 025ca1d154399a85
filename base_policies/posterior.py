"""Posterior behaviour cloning (PostBC, Wagenmaker et al., arXiv 2512.16911): BC targets widened by
how unsure the data leaves us about the demonstrator.

Plain BC fits the demonstrated actions; where the data holds one demo of a state, the policy puts
all its mass on that one action, and no choice of noise (DSRL) or small correction can make it
try the others the demonstrator might have taken. PostBC instead clones the *posterior* over the
demonstrator's behaviour given the data. The practical recipe used here: fit an ensemble of
regressors (observation window -> action chunk), each on a bootstrap resample of the *episodes*
(the independent draws from the demonstrator; resampling windows would let every member see the
one demo of a rare state and agree on it); the spread of their predictions at a window estimates
the posterior's width there. The diffusion policy is then trained on ``a + scale * spread(s) * eps``
with fresh ``eps`` each time the window is drawn: wide where the data is thin or the demonstrators
disagree, close to plain BC where many demos agree. (A diagonal Gaussian stands in for the paper's full covariance.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dpft.base_policies.data.windows import Windows


@dataclass
class PosteriorTargets:
    """Per-window spread of the ensemble, in action units, and the data's action range (targets
    are clipped to it, so a widened target never asks for an action the data never bounds)."""

    spread: torch.Tensor  # [N, pred_horizon, action_dim]
    low: torch.Tensor  # [action_dim]
    high: torch.Tensor  # [action_dim]
    scale: float = 1.0

    def sample(self, idx: torch.Tensor, actions: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        eps = torch.randn(actions.shape, generator=generator)
        return torch.clamp(actions + self.scale * self.spread[idx] * eps, self.low, self.high)


def _regressor(n_in: int, n_out: int, hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_out)
    )


def ensemble_spread(
    windows: Windows,
    episode_of: torch.Tensor,
    members: int = 5,
    steps: int = 2000,
    seed: int = 0,
    hidden: int = 256,
    batch_size: int = 256,
    lr: float = 1e-3,
    scale: float = 1.0,
) -> PosteriorTargets:
    """Train ``members`` MLP regressors on ``windows`` (standardised inputs and outputs), each on
    the windows of a bootstrap resample of the episodes (``episode_of[i]``: window i's episode),
    and return the standard deviation of their predictions at every window."""
    if members < 2:
        raise ValueError("an ensemble needs at least 2 members")
    n = len(windows)
    x = windows.obs.reshape(n, -1).float()
    y = windows.actions.reshape(n, -1).float()
    x_mean, x_std = x.mean(0), x.std(0).clamp_min(1e-6)
    y_mean, y_std = y.mean(0), y.std(0).clamp_min(1e-6)
    xs, ys = (x - x_mean) / x_std, (y - y_mean) / y_std
    gen = torch.Generator().manual_seed(seed)
    episodes, preds = torch.unique(episode_of), []
    for _ in range(members):
        with torch.random.fork_rng():  # the caller's global stream (per-process seeds) stays as it was
            torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=gen)))
            net = _regressor(x.shape[1], y.shape[1], hidden)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        drawn = episodes[torch.randint(len(episodes), (len(episodes),), generator=gen)]
        boot = torch.cat([torch.nonzero(episode_of == e).flatten() for e in drawn])  # with repeats
        for _ in range(steps):
            idx = boot[torch.randint(len(boot), (min(batch_size, n),), generator=gen)]
            loss = (net(xs[idx]) - ys[idx]).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            preds.append(net(xs))
    spread = torch.stack(preds).std(0) * y_std  # back to action units
    actions = windows.actions.reshape(-1, windows.actions.shape[-1])
    return PosteriorTargets(spread.reshape(windows.actions.shape), actions.min(0).values, actions.max(0).values, scale)
