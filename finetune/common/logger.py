"""SB3's logger with environment steps, not agent transitions, on TensorBoard's x axis."""

from __future__ import annotations

from pathlib import Path

from stable_baselines3.common.logger import Logger, TensorBoardOutputFormat


class EnvStepLogger(Logger):
    """A transition of a chunked env is ``env_steps_per_transition`` env steps (DSRL: one
    executed chunk); curves of methods with different transition sizes then share an x axis."""

    def __init__(self, folder: Path, env_steps_per_transition: int = 1) -> None:
        super().__init__(str(folder), [TensorBoardOutputFormat(str(folder))])
        self.k = env_steps_per_transition

    def dump(self, step: int = 0) -> None:
        super().dump(step * self.k)
