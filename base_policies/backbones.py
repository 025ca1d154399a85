"""Denoiser networks: ``f(x_t [B, H, A], time [B], cond [B, C]) -> [B, H, A]``.

The time input is the diffusion step index (as a float) or the flow time in [0, 1] scaled
by 1000; both go through the same sinusoidal embedding. ``cond`` is the flattened,
normalised observation history. Backbones are chosen by name from :data:`BACKBONES`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from dpft.base_policies.config import PolicyConfig

BACKBONES: dict[str, Callable[[PolicyConfig], nn.Module]] = {}


def register_backbone(name: str):
    """Decorator: make a backbone builder available as ``--backbone NAME``."""

    def deco(builder):
        BACKBONES[name] = builder
        return builder

    return deco


class SinusoidalEmbedding(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
        args = t.float()[:, None] * freqs[None]
        return torch.cat([args.sin(), args.cos()], dim=-1)


def time_mlp(dim: int) -> nn.Module:
    return nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, dim * 4), nn.SiLU(), nn.Linear(dim * 4, dim))


class ResidualBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class ResidualMLP(nn.Module):
    """Flattens the noisy chunk, concatenates time and observation features, and applies
    residual blocks. Small and fast on CPU: the workhorse for state-based tasks."""

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        a = cfg.arch
        self.horizon, self.action_dim = a.pred_horizon, cfg.action_dim
        cond_dim = cfg.obs_dim * a.obs_horizon
        self.time = time_mlp(a.time_embed_dim)
        self.inp = nn.Linear(self.horizon * self.action_dim + a.time_embed_dim + cond_dim, a.hidden_dim)
        self.blocks = nn.Sequential(*[ResidualBlock(a.hidden_dim) for _ in range(a.num_blocks)])
        self.out = nn.Sequential(nn.LayerNorm(a.hidden_dim), nn.Linear(a.hidden_dim, self.horizon * self.action_dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x.flatten(1), self.time(t), cond], dim=-1)
        return self.out(self.blocks(self.inp(h))).view(-1, self.horizon, self.action_dim)


class Conv1dBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, groups: int = 8) -> None:
        super().__init__(
            nn.Conv1d(cin, cout, kernel, padding=kernel // 2), nn.GroupNorm(min(groups, cout), cout), nn.SiLU()
        )


class FiLMResBlock(nn.Module):
    """Two conv blocks; the condition predicts a per-channel scale and bias (FiLM)."""

    def __init__(self, cin: int, cout: int, cond_dim: int, kernel: int) -> None:
        super().__init__()
        self.conv1 = Conv1dBlock(cin, cout, kernel)
        self.conv2 = Conv1dBlock(cout, cout, kernel)
        self.film = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * cout))
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        h = self.conv2(h * (1 + scale) + bias)
        return h + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """Temporal 1-D U-Net with FiLM conditioning (the standard visuomotor-policy backbone).

    Convolves over the action-chunk time axis with actions as channels; each level after
    the first halves the horizon, so ``pred_horizon`` must divide by ``2**(levels-1)``.
    """

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        a = cfg.arch
        dims = [cfg.action_dim, *a.unet_dims]
        cond_dim = a.time_embed_dim + cfg.obs_dim * a.obs_horizon
        k = a.kernel_size
        self.time = time_mlp(a.time_embed_dim)
        self.down = nn.ModuleList()
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(dims) - 2
            self.down.append(
                nn.ModuleList(
                    [
                        FiLMResBlock(cin, cout, cond_dim, k),
                        FiLMResBlock(cout, cout, cond_dim, k),
                        nn.Identity() if last else nn.Conv1d(cout, cout, 3, stride=2, padding=1),
                    ]
                )
            )
        mid = dims[-1]
        self.mid = nn.ModuleList([FiLMResBlock(mid, mid, cond_dim, k), FiLMResBlock(mid, mid, cond_dim, k)])
        self.up = nn.ModuleList()
        rev = list(reversed(dims[1:]))
        for cout, cin in zip(rev[1:], rev[:-1]):
            self.up.append(
                nn.ModuleList(
                    [
                        FiLMResBlock(cin * 2, cout, cond_dim, k),
                        FiLMResBlock(cout, cout, cond_dim, k),
                        nn.ConvTranspose1d(cout, cout, 4, stride=2, padding=1),
                    ]
                )
            )
        self.final = nn.Sequential(Conv1dBlock(dims[1], dims[1], k), nn.Conv1d(dims[1], cfg.action_dim, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        c = torch.cat([self.time(t), cond], dim=-1)
        h = unet_levels(x.transpose(1, 2), c, self.down, self.mid, self.up)  # [B, A, H] channels first
        return self.final(h).transpose(1, 2)


def unet_levels(h: torch.Tensor, c: torch.Tensor, down, mid, up) -> torch.Tensor:
    """The way down (two FiLM blocks and a downsampling per level, skips kept), the middle blocks,
    and the way up (skip concatenated, two blocks, an upsampling): shared by dpft's U-Net and
    LeRobot's, whose modules differ only in their names."""
    skips = []
    for res1, res2, downsample in down:
        h = res2(res1(h, c), c)
        skips.append(h)
        h = downsample(h)
    for res in mid:
        h = res(h, c)
    for res1, res2, upsample in up:
        h = torch.cat([h, skips.pop()], dim=1)
        h = upsample(res2(res1(h, c), c))
    return h


register_backbone("mlp")(ResidualMLP)
register_backbone("unet")(ConditionalUnet1D)
