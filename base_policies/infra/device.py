"""``--device``: auto | cpu | cuda | cuda:N, checked once with a message that says what to change."""

from __future__ import annotations

import itertools
import re

import torch

from dpft.base_policies.infra.errors import ConfigError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def check_device_spec(spec: str) -> None:
    if not DEVICE_PATTERN.match(spec):
        raise ConfigError(f"--device {spec!r}: choose auto, cpu, cuda or cuda:N")


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` is the first CUDA GPU when there is one, else the CPU."""
    check_device_spec(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: this torch build or machine has no CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps: MPS is not available here; use --device cpu")
    return device


def module_device(module: torch.nn.Module) -> torch.device:
    """Where a module's weights (or, for a weightless module, its buffers) live. Lazy: the first
    tensor found answers (unpacking every parameter cost ~0.5 ms a call, about a tenth of a DSRL
    transition's collection, since rollouts ask the base's device several times per step)."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device
    return torch.device("cpu")
