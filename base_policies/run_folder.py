"""The one run-folder layout every training command writes::

    OUT/
      config.yaml        resolved configuration (what --resume reads back)
      tb/                TensorBoard events (config also logged once as text)
      checkpoint/        latest training state, replaced atomically (everything --resume needs)
      policy/            the final policy folder (config.json + model.safetensors)

``load_policy(OUT)`` accepts the run folder itself and loads ``OUT/policy``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from dpft.base_policies.config import from_dict, to_dict
from dpft.base_policies.errors import ConfigError
from dpft.base_policies.state_io import atomic_write_text


@dataclass
class RunFolder:
    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def tb_dir(self) -> Path:
        return self.root / "tb"

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "checkpoint"

    @property
    def policy_dir(self) -> Path:
        return self.root / "policy"

    def has_checkpoint(self) -> bool:
        return (self.checkpoint_dir / "state.json").exists()

    def write_config(self, cfg: Any) -> None:
        atomic_write_text(self.config_path, yaml.safe_dump(to_dict(cfg), sort_keys=False))

    def read_config(self, cls: type, missing: dict[str, Any] | None = None) -> Any:
        """The run's config. ``missing``: values for keys the file lacks because it was written
        before they existed -- the behaviour the run actually had, which need not be today's default."""
        if not self.config_path.exists():
            raise ConfigError(f"cannot resume: {self.config_path} does not exist (was {self.root} started by dpft?)")
        stored = yaml.safe_load(self.config_path.read_text()) or {}
        return from_dict(cls, {**(missing or {}), **stored})

    def writer(self, cfg: Any):
        """TensorBoard writer with the full config logged once as text."""
        from torch.utils.tensorboard import SummaryWriter

        w = SummaryWriter(str(self.tb_dir))
        text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
        w.add_text("config", "```\n" + text + "\n```")
        return w


def open_run(cfg: Any, cls: type, missing: dict[str, Any] | None = None) -> tuple[Any, RunFolder]:
    """The run folder of ``cfg.out`` for every training command. With ``cfg.resume`` the config is
    the run's own ``config.yaml`` (only ``progress`` is taken from the command line); without it, a
    folder that already holds a run is refused rather than overwritten."""
    run = RunFolder(cfg.out)
    if cfg.resume:
        cfg = replace(run.read_config(cls, missing), resume=True, progress=cfg.progress)
    elif run.has_checkpoint():
        raise ConfigError(f"{cfg.out} already holds a run; pass --resume to continue it or choose another --out")
    return cfg, run
