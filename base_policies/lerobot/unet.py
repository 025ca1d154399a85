"""LeRobot's 1-D conditional U-Net, with LeRobot's parameter names.

A LeRobot diffusion checkpoint stores the denoiser under ``diffusion.unet.*``; this module has
the same layout, so those tensors load into it by name and nothing is converted. The network
is the one of Chi et al.'s Diffusion Policy as LeRobot builds it:

- the diffusion step goes through a sinusoidal embedding and a Mish MLP, and is concatenated
  with the flattened observation history (the "global conditioning");
- each level has two residual blocks (Conv1d -> GroupNorm -> Mish, FiLM-modulated by the
  conditioning: scale and bias, or bias only) and halves the horizon, except the last;
- the way up mirrors it with skip connections and transposed convolutions.

Two details of LeRobot's layout matter for loading: every up level has an upsampling layer,
and the block of the final convolution uses 8 groups whatever ``n_groups`` says.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dpft.base_policies.backbones import unet_levels


class StepEmbedding(nn.Module):
    """Sinusoidal embedding of the (integer) diffusion step: ``[B] -> [B, dim]``.

    The formula of :class:`dpft.base_policies.backbones.SinusoidalEmbedding`, but in LeRobot's
    order of operations: the two differ by up to 4e-6, and this one gives LeRobot's chunks to the bit."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device) * -(math.log(10000) / (half - 1)))
        args = t.unsqueeze(-1) * freqs.unsqueeze(0)
        return torch.cat((args.sin(), args.cos()), dim=-1)


class ConvBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish, as ``block.0/1/2``."""

    def __init__(self, inp: int, out: int, kernel_size: int, n_groups: int = 8) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(inp, out, kernel_size, padding=kernel_size // 2), nn.GroupNorm(n_groups, out), nn.Mish()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class FiLMResidualBlock(nn.Module):
    """Two conv blocks; the conditioning shifts (and optionally scales) the first one's output."""

    def __init__(self, inp: int, out: int, cond_dim: int, kernel_size: int, n_groups: int, film_scale: bool) -> None:
        super().__init__()
        self.film_scale = film_scale
        self.out_channels = out
        self.conv1 = ConvBlock(inp, out, kernel_size, n_groups)
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, out * 2 if film_scale else out))
        self.conv2 = ConvBlock(out, out, kernel_size, n_groups)
        self.residual_conv = nn.Conv1d(inp, out, 1) if inp != out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        film = self.cond_encoder(cond).unsqueeze(-1)
        if self.film_scale:
            h = film[:, : self.out_channels] * h + film[:, self.out_channels :]
        else:
            h = h + film
        return self.conv2(h) + self.residual_conv(x)


class LeRobotUnet1d(nn.Module):
    """``f(x [B, horizon, A], step [B], global_cond [B, C]) -> [B, horizon, A]``."""

    def __init__(
        self,
        action_dim: int,
        global_cond_dim: int,
        down_dims: tuple[int, ...],
        kernel_size: int,
        n_groups: int,
        step_embed_dim: int,
        film_scale: bool,
    ) -> None:
        super().__init__()
        self.diffusion_step_encoder = nn.Sequential(
            StepEmbedding(step_embed_dim),
            nn.Linear(step_embed_dim, step_embed_dim * 4),
            nn.Mish(),
            nn.Linear(step_embed_dim * 4, step_embed_dim),
        )
        cond = step_embed_dim + global_cond_dim

        def block(i: int, o: int) -> FiLMResidualBlock:
            return FiLMResidualBlock(i, o, cond, kernel_size, n_groups, film_scale)

        levels = [(action_dim, down_dims[0]), *zip(down_dims[:-1], down_dims[1:])]
        self.down_modules = nn.ModuleList(
            nn.ModuleList(
                [block(i, o), block(o, o), nn.Conv1d(o, o, 3, 2, 1) if k < len(levels) - 1 else nn.Identity()]
            )
            for k, (i, o) in enumerate(levels)
        )
        self.mid_modules = nn.ModuleList([block(down_dims[-1], down_dims[-1]), block(down_dims[-1], down_dims[-1])])
        self.up_modules = nn.ModuleList(
            nn.ModuleList([block(i * 2, o), block(o, o), nn.ConvTranspose1d(o, o, 4, 2, 1)])
            for o, i in reversed(levels[1:])
        )
        self.final_conv = nn.Sequential(
            ConvBlock(down_dims[0], down_dims[0], kernel_size), nn.Conv1d(down_dims[0], action_dim, 1)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        cond = torch.cat([self.diffusion_step_encoder(t), global_cond], dim=-1)
        x = unet_levels(x.transpose(1, 2), cond, self.down_modules, self.mid_modules, self.up_modules)
        return self.final_conv(x).transpose(1, 2)
