"""Reading and writing LeRobot ``pretrained_model/`` folders of diffusion policies.

A LeRobot diffusion policy folder holds ``config.json`` (``"type": "diffusion"``, the features,
horizons, U-Net and noise-scheduler settings) and ``model.safetensors`` (``diffusion.unet.*``).
Where the normaliser statistics live depends on the LeRobot version that saved it:

- ``buffers`` layout (LeRobot 0.3 and earlier draccus-era versions): in ``model.safetensors``
  as ``normalize_inputs.buffer_<key>.<stat>``, ``normalize_targets.*`` and ``unnormalize_outputs.*``;
- ``processors`` layout (LeRobot 0.4): in ``policy_preprocessor.json`` /
  ``policy_postprocessor.json`` and the ``*_normalizer_processor.safetensors`` files they name.

:func:`read_folder` checks everything dpft relies on and turns each problem into one
:class:`CheckpointError` naming what is supported. The files dpft does not change (config and
processor files) are kept byte for byte, so :func:`write_folder` writes back a folder LeRobot
loads as it loaded the original, with only the U-Net weights replaced.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dpft.base_policies.infra.errors import CheckpointError
from dpft.base_policies.infra.state_io import atomic_dir
from dpft.base_policies.lerobot.schedule import BETA_SCHEDULES

STATE, ENV_STATE, ACTION = "observation.state", "observation.environment_state", "action"
UNET_PREFIX = "diffusion.unet."
COMPILED_PREFIX = UNET_PREFIX + "_orig_mod."  # config compile_model: the U-Net was saved inside torch.compile
BUFFER_PREFIXES = ("normalize_inputs.", "normalize_targets.", "unnormalize_outputs.")
PREPROCESSOR, POSTPROCESSOR = "policy_preprocessor.json", "policy_postprocessor.json"
KNOWN_STEPS = {"rename_observations_processor", "to_batch_processor", "device_processor"}
NORM_STATS = {"MEAN_STD": ("mean", "std"), "MIN_MAX": ("min", "max"), "QUANTILES": ("q01", "q99"),
              "QUANTILE10": ("q10", "q90"), "IDENTITY": ()}  # fmt: skip
SUPPORTED = (
    "dpft reads LeRobot diffusion policies (type 'diffusion') on state observations: "
    "'observation.state' plus optionally 'observation.environment_state', and one 'action', saved by "
    "LeRobot 0.3 (normaliser in model.safetensors) or 0.4 (normaliser in policy_preprocessor.json)"
)

# Settings that shape the network or the sampler, with the JSON types they must have. LeRobot's
# save_pretrained writes all of them; a folder without one is from a format dpft does not cover.
REQUIRED: dict[str, tuple[type, ...]] = {
    "n_obs_steps": (int,), "horizon": (int,), "n_action_steps": (int,), "input_features": (dict,),
    "output_features": (dict,), "normalization_mapping": (dict,), "down_dims": (list,), "kernel_size": (int,),
    "n_groups": (int,), "diffusion_step_embed_dim": (int,), "use_film_scale_modulation": (bool,),
    "noise_scheduler_type": (str,), "num_train_timesteps": (int,), "beta_schedule": (str,),
    "beta_start": (float, int), "beta_end": (float, int), "prediction_type": (str,), "clip_sample": (bool,),
    "clip_sample_range": (float, int),
}  # fmt: skip


@dataclass
class LeRobotFolder:
    """What dpft needs from a LeRobot diffusion policy folder, plus the bytes it passes through."""

    config: dict[str, Any]
    """LeRobot's ``config.json`` as read."""
    layout: Literal["buffers", "processors"]
    """Where the normaliser statistics live (see the module docstring)."""
    stats: dict[str, dict[str, torch.Tensor]]
    """Feature key -> statistic name -> tensor, for every feature that is normalised."""
    unet: dict[str, torch.Tensor]
    """U-Net weights, names without the ``diffusion.unet.`` prefix."""
    modes: dict[str, str]
    """Feature key -> normalisation mode (MEAN_STD, MIN_MAX, ..., IDENTITY) as LeRobot applies it:
    from ``normalization_mapping`` (0.3), from the normaliser steps' own settings (0.4)."""
    eps: dict[str, float]
    """Feature key -> the normaliser's epsilon (LeRobot 0.4 stores it per step; 0.3 hard-codes 1e-8)."""
    unet_prefix: str = UNET_PREFIX
    """``diffusion.unet.``, or ``diffusion.unet._orig_mod.`` when LeRobot saved a ``torch.compile``d U-Net."""
    kept_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    """``model.safetensors`` entries other than the U-Net (the 0.3 normaliser buffers), written back unchanged."""
    kept_files: dict[str, bytes] = field(default_factory=dict)
    """Other files of the folder (config, processors), written back byte for byte."""

    @property
    def state_dim(self) -> int:
        return int(self.config["input_features"][STATE]["shape"][0])

    @property
    def env_state_dim(self) -> int:
        env = self.config["input_features"].get(ENV_STATE)
        return int(env["shape"][0]) if env else 0

    @property
    def action_dim(self) -> int:
        return int(self.config["output_features"][ACTION]["shape"][0])

    @property
    def num_inference_steps(self) -> int:
        return int(self.config.get("num_inference_steps") or self.config["num_train_timesteps"])

    def norm_mode(self, key: str) -> str:
        return self.modes.get(key, "IDENTITY")


def find_folder(path: str | Path) -> Path:
    """Accept the ``pretrained_model/`` folder itself or a checkpoint folder holding one."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"LeRobot policy folder {path} does not exist")
    if not (path / "config.json").exists() and (path / "pretrained_model" / "config.json").exists():
        return path / "pretrained_model"
    return path


def read_folder(path: str | Path) -> LeRobotFolder:
    """Read and check a LeRobot diffusion policy folder (see the module docstring)."""
    path = find_folder(path)
    config = _read_json(path / "config.json", what="config.json")
    check_config(config, path / "config.json")
    tensors = _read_tensors(path / "model.safetensors")
    prefix = COMPILED_PREFIX if any(k.startswith(COMPILED_PREFIX) for k in tensors) else UNET_PREFIX
    unet = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    buffers = {k: v for k, v in tensors.items() if k.startswith(BUFFER_PREFIXES)}
    other = sorted(set(tensors) - set(buffers) - {prefix + k for k in unet})
    if other:
        raise CheckpointError(f"{path / 'model.safetensors'} has tensors dpft cannot place: {other[:4]}; {SUPPORTED}")
    if not unet:
        raise CheckpointError(f"{path / 'model.safetensors'} has no U-Net weights (diffusion.unet.*); {SUPPORTED}")
    kept_files = {
        p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file() and p.name != "model.safetensors"
    }
    if (path / PREPROCESSOR).exists():
        stats, modes, eps = _from_processors(path, config)
        layout = "processors"
    elif buffers:
        stats, layout = _stats_from_buffers(path, buffers), "buffers"
        kinds = {k: f["type"] for k, f in _features(config).items()}
        modes = {k: str(config["normalization_mapping"].get(kind, "IDENTITY")) for k, kind in kinds.items()}
        eps = dict.fromkeys(kinds, 1e-8)
    else:
        raise CheckpointError(
            f"{path} has no normaliser statistics: LeRobot 0.4 writes them to {PREPROCESSOR} and "
            "policy_postprocessor.json (with their .safetensors files), LeRobot 0.3 into model.safetensors "
            "(normalize_inputs.*); copy those files from the training run's checkpoint folder"
        )
    folder = LeRobotFolder(config, layout, stats, unet, modes, eps, prefix, buffers, kept_files)
    _check_stats(folder, path)
    return folder


def _features(config: dict[str, Any]) -> dict[str, Any]:
    """The features the diffusion model uses (LeRobot's diffusion policy reads no other state keys)."""
    used = {k: f for k, f in config["input_features"].items() if k in (STATE, ENV_STATE)}
    return used | config["output_features"]


def check_config(config: Any, file: Path) -> None:
    """One clear message for a config dpft cannot run: another policy type, images, a format not covered."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{file} is not a JSON object; {SUPPORTED}")
    if "type" not in config:
        old = " (it looks like a LeRobot config from before 0.2: input_shapes)" if "input_shapes" in config else ""
        raise CheckpointError(
            f"{file} has no 'type' field{old}; re-save the policy with LeRobot 0.3 or 0.4. {SUPPORTED}"
        )
    if config["type"] != "diffusion":
        raise CheckpointError(f"{file} is a LeRobot {config['type']!r} policy; {SUPPORTED}")
    for key, types in REQUIRED.items():
        if key not in config:
            raise CheckpointError(f"{file} lacks {key!r}: a LeRobot format dpft does not cover; {SUPPORTED}")
        if not isinstance(config[key], types) or (bool not in types and isinstance(config[key], bool)):
            raise CheckpointError(
                f"{file}: {key!r} must be {' or '.join(t.__name__ for t in types)}, got {config[key]!r}"
            )
    steps = config.get("num_inference_steps")
    if steps is not None and (
        not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= config["num_train_timesteps"]
    ):
        raise CheckpointError(f"{file}: num_inference_steps must be null or 1..num_train_timesteps, got {steps!r}")
    _check_features(config, file)
    choices = {"noise_scheduler_type": ("DDPM", "DDIM"), "prediction_type": ("epsilon", "sample"),
               "beta_schedule": BETA_SCHEDULES}  # fmt: skip
    for key, allowed in choices.items():
        if config[key] not in allowed:
            raise CheckpointError(f"{file}: {key} {config[key]!r} is not supported; choose one of {list(allowed)}")
    if config["noise_scheduler_type"] == "DDIM" and config["beta_schedule"] == "sigmoid":
        raise CheckpointError(f"{file}: diffusers' DDIM scheduler has no 'sigmoid' beta_schedule")
    o, h, a = config["n_obs_steps"], config["horizon"], config["n_action_steps"]
    if o < 1 or not 1 <= a <= h - o + 1:
        raise CheckpointError(f"{file}: needs n_obs_steps >= 1 and 1 <= n_action_steps <= horizon - n_obs_steps + 1")
    dims = config["down_dims"]
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims):
        raise CheckpointError(f"{file}: down_dims must be a non-empty list of positive integers, got {dims!r}")
    if h % 2 ** len(dims):
        raise CheckpointError(f"{file}: horizon {h} is not a multiple of 2**len(down_dims), as LeRobot requires")
    groups, kernel, embed = config["n_groups"], config["kernel_size"], config["diffusion_step_embed_dim"]
    if groups < 1 or any(d % groups for d in dims) or dims[0] % 8:
        raise CheckpointError(
            f"{file}: every down_dims entry must be divisible by n_groups ({groups}), and the first by 8 "
            f"(the final block's groups), got {dims}"
        )
    if kernel < 1 or kernel % 2 == 0 or embed < 4 or embed % 2:
        raise CheckpointError(f"{file}: needs an odd kernel_size and an even diffusion_step_embed_dim >= 4")


def _check_features(config: dict[str, Any], file: Path) -> None:
    inputs, outputs = config["input_features"], config["output_features"]
    images = sorted(k for k, f in inputs.items() if "image" in k or (isinstance(f, dict) and f.get("type") == "VISUAL"))
    if images:
        raise CheckpointError(f"{file} is image-conditioned ({images}); {SUPPORTED}")
    expected = {STATE: "STATE", ENV_STATE: "ENV"}
    if STATE not in inputs:
        raise CheckpointError(f"{file} has input features {sorted(inputs)}; {SUPPORTED}")
    if set(outputs) != {ACTION}:
        raise CheckpointError(f"{file} has output features {sorted(outputs)}; {SUPPORTED}")
    # other observation.* keys may be listed (LeRobot lists every dataset key) but its diffusion model
    # conditions on observation.state and observation.environment_state only, and so does dpft
    for key, feature in _features(config).items():
        kind = expected.get(key, "ACTION")
        shape = feature.get("shape") if isinstance(feature, dict) else None
        if not isinstance(feature, dict) or feature.get("type") != kind:
            raise CheckpointError(f"{file}: feature {key!r} must have type {kind!r}, got {feature!r}")
        if not (isinstance(shape, list) and len(shape) == 1 and isinstance(shape[0], int) and shape[0] >= 1):
            raise CheckpointError(f"{file}: feature {key!r} must be a flat vector (shape [n]), got shape {shape!r}")
    _check_norm_map(config["normalization_mapping"], file)


def _check_norm_map(modes: Any, file: Path) -> None:
    if not isinstance(modes, dict):
        raise CheckpointError(f"{file}: the normalisation mapping must be an object, got {modes!r}")
    for kind in ("STATE", "ENV", "ACTION"):
        mode = modes.get(kind, "IDENTITY")
        if not isinstance(mode, str) or mode not in NORM_STATS:
            raise CheckpointError(f"{file}: normalisation {mode!r} for {kind} is not supported; {sorted(NORM_STATS)}")


def _read_json(file: Path, what: str) -> Any:
    if not file.exists():
        raise CheckpointError(f"{file.parent} is not a LeRobot policy folder: {what} is missing")
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON ({e}); copy it again from the training run") from None


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    if not file.exists():
        raise CheckpointError(f"{file.parent} is incomplete: {file.name} is missing")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file} is corrupt or truncated ({e}); copy it again from the training run") from None


def _stats_from_buffers(path: Path, buffers: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """0.3 layout: ``normalize_inputs`` holds the inputs' statistics, ``unnormalize_outputs`` the action's."""
    stats: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in buffers.items():
        parts = name.split(".")
        if len(parts) != 3:
            raise CheckpointError(
                f"{path / 'model.safetensors'}: normaliser tensor {name!r} is not MODULE.buffer_KEY.STAT"
            )
        module, buffer, stat = parts
        if module == "normalize_targets":
            continue  # a copy of unnormalize_outputs' statistics, used only by LeRobot's training loss
        key = buffer.removeprefix("buffer_").replace("_", ".")
        key = {"observation.environment.state": ENV_STATE}.get(key, key)
        if torch.isinf(tensor).all():
            raise CheckpointError(
                f"{path / 'model.safetensors'}: the normaliser statistics {name} were never set (all inf, "
                "LeRobot's placeholder); the policy was saved before its dataset statistics were loaded"
            )
        stats.setdefault(key, {})[stat] = tensor.float()
    return stats


def _from_processors(path: Path, config: dict[str, Any]) -> tuple[dict, dict[str, str], dict[str, float]]:
    """0.4 layout: (statistics, modes, eps) per feature. The inputs' come from the preprocessor's
    normaliser step, the action's from the postprocessor's unnormaliser step, each with the
    ``norm_map``, ``eps`` and ``normalize_observation_keys`` of that step, which is what LeRobot 0.4
    applies (its ``normalization_mapping`` in config.json only seeds them)."""
    stats: dict[str, dict[str, torch.Tensor]] = {}
    modes: dict[str, str] = {}
    eps: dict[str, float] = {}
    kinds = {k: f["type"] for k, f in _features(config).items()}
    for name, wanted in ((PREPROCESSOR, "normalizer_processor"), (POSTPROCESSOR, "unnormalizer_processor")):
        file = path / name
        pipeline = _read_json(file, what=name)
        steps = pipeline.get("steps") if isinstance(pipeline, dict) else None
        if not isinstance(steps, list) or not all(isinstance(st, dict) for st in steps):
            raise CheckpointError(f"{file} has no 'steps' list of objects; copy it again from the training run")
        found = [st for st in steps if st.get("registry_name") == wanted]
        foreign = sorted({str(st.get("registry_name")) for st in steps} - KNOWN_STEPS - {wanted})
        if foreign:
            covered = sorted(KNOWN_STEPS | {wanted})
            raise CheckpointError(
                f"{file} has processor step(s) {foreign} dpft does not reproduce; dpft covers {covered}"
            )
        _check_device_steps(steps, file)
        if len(found) != 1:
            raise CheckpointError(f"{file} has {len(found)} {wanted} steps, expected one: the normaliser is missing")
        step = found[0]
        settings = step.get("config", {})
        if not isinstance(settings, dict) or not isinstance(step.get("state_file"), str):
            raise CheckpointError(f"{file}: the {wanted} step needs a 'config' object and a 'state_file' name")
        step_eps = settings.get("eps", 1e-8)
        if isinstance(step_eps, bool) or not isinstance(step_eps, (int, float)):
            raise CheckpointError(f"{file}: the {wanted} step's eps must be a number, got {step_eps!r}")
        norm_map = settings.get("norm_map", config["normalization_mapping"])
        _check_norm_map(norm_map, file)
        only = settings.get("normalize_observation_keys")
        mine = [k for k in kinds if (k == ACTION) == (name == POSTPROCESSOR)]
        for key in mine:
            skip = key != ACTION and isinstance(only, list) and key not in only
            modes[key] = "IDENTITY" if skip else norm_map.get(kinds[key], "IDENTITY")
            eps[key] = float(step_eps)
        for flat_key, tensor in _read_tensors(path / step["state_file"]).items():
            if "." not in flat_key:
                raise CheckpointError(f"{path / step['state_file']}: statistic {flat_key!r} is not KEY.STAT")
            key, stat = flat_key.rsplit(".", 1)
            if key in mine:
                stats.setdefault(key, {})[stat] = tensor.float()
    return stats, modes, eps


def _check_device_steps(steps: list[dict[str, Any]], file: Path) -> None:
    """A ``device_processor`` that casts to another float type (float16, bfloat16) changes LeRobot's
    chunks (by up to 5e-3 measured with float16); dpft runs float32, so it refuses rather than
    differ in silence."""
    for st in steps:
        if st.get("registry_name") != "device_processor":
            continue
        dtype = (st.get("config") or {}).get("float_dtype") if isinstance(st.get("config"), dict) else None
        if dtype not in (None, "float32", "torch.float32"):
            raise CheckpointError(
                f"{file}: its device_processor casts to {dtype}, which dpft does not reproduce (it runs float32, and "
                "the chunks would differ from LeRobot's); set that step's float_dtype to null to load it"
            )


def _check_stats(folder: LeRobotFolder, path: Path) -> None:
    for key, feature in _features(folder.config).items():
        mode = folder.norm_mode(key)
        for stat in NORM_STATS[mode]:
            tensor = folder.stats.get(key, {}).get(stat)
            if tensor is None:
                raise CheckpointError(
                    f"{path}: the normaliser has no {stat!r} for {key!r} ({mode} normalisation); copy the "
                    "processor files (LeRobot 0.4) or the full model.safetensors (0.3) from the training run"
                )
            if tuple(tensor.shape) != tuple(feature["shape"]):
                raise CheckpointError(
                    f"{path}: {key}.{stat} has shape {tuple(tensor.shape)}, expected {feature['shape']}"
                )
            if not torch.isfinite(tensor).all():
                raise CheckpointError(f"{path}: {key}.{stat} has non-finite values; recompute the dataset statistics")
    for key, eps in folder.eps.items():
        if not math.isfinite(eps) or eps < 0:
            raise CheckpointError(f"{path}: normaliser eps {eps!r} of {key!r} is not a finite non-negative number")


def write_folder(folder: LeRobotFolder, unet: dict[str, torch.Tensor], path: Path) -> None:
    """Write ``folder`` back as a LeRobot folder with the U-Net weights ``unet``, atomically."""
    state = {folder.unet_prefix + k: v.detach().cpu().contiguous() for k, v in unet.items()}
    state |= {k: v.contiguous() for k, v in folder.kept_tensors.items()}
    with atomic_dir(Path(path)) as tmp:
        for name, data in folder.kept_files.items():
            (tmp / name).write_bytes(data)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
