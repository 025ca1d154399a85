"""Small SB3 callbacks that every fine-tuning method composes (one job each).

Counting: SB3 counts agent transitions (``num_timesteps``); a chunked env executes ``k`` env
steps per transition, so every cadence here is in env steps = ``num_timesteps * k``.
Order matters only in one place: callbacks that *record* scalars run before :class:`PeriodicEval`,
which dumps the logger.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from stable_baselines3.common.callbacks import BaseCallback
from tqdm import tqdm

from dpft.base_policies.infra.interrupt import RunInterrupted, stop_requested
from dpft.finetune.common.eval_log import append_eval, trim_evals


class WallClock:
    """Training seconds, counted across resumes (saved in the checkpoint)."""

    def __init__(self, before: float = 0.0) -> None:
        self.before, self.t0 = before, time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.t0


class EnvStepCallback(BaseCallback):
    """Base: knows the env steps per transition and fires ``on_every`` each ``every`` env steps."""

    def __init__(self, k: int = 1, every: int | None = None) -> None:
        super().__init__()
        self.k, self.every, self.next_at = k, every, 0

    @property
    def env_steps(self) -> int:
        return self.model.num_timesteps * self.k

    def _on_training_start(self) -> None:
        if self.every:
            self.next_at = (self.env_steps // self.every + 1) * self.every

    def due(self) -> bool:
        """True once per ``every`` env steps."""
        if self.every and self.env_steps >= self.next_at:
            self.next_at += self.every
            return True
        return False

    def _on_step(self) -> bool:
        return True


class ProgressBar(EnvStepCallback):
    def __init__(self, total: int, k: int = 1, desc: str = "finetune", enabled: bool = True) -> None:
        super().__init__(k)
        self.total, self.desc, self.enabled = total, desc, enabled

    def _on_training_start(self) -> None:
        self.bar = tqdm(
            total=self.total, initial=self.env_steps, disable=not self.enabled, desc=self.desc, unit="env step"
        )

    def _on_step(self) -> bool:
        self.bar.update(self.env_steps - self.bar.n)  # tqdm throttles redraws itself
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


class Throughput(EnvStepCallback):
    """``time/env_steps_per_s`` and ``time/grad_steps_per_s`` since this process started."""

    def _on_training_start(self) -> None:
        super()._on_training_start()
        self.t0, self.steps0, self.updates0 = time.perf_counter(), self.env_steps, getattr(self.model, "_n_updates", 0)

    def _on_step(self) -> bool:
        if self.due():
            elapsed = max(time.perf_counter() - self.t0, 1e-9)
            self.logger.record("time/env_steps_per_s", (self.env_steps - self.steps0) / elapsed)
            self.logger.record("time/grad_steps_per_s", (self.model._n_updates - self.updates0) / elapsed)
        return True


class TemperatureFloor(BaseCallback):
    """Keep SAC's entropy temperature at or above ``min_alpha`` (guards against its collapse)."""

    def __init__(self, min_alpha: float) -> None:
        super().__init__()
        self.log_floor = math.log(min_alpha)

    def _on_step(self) -> bool:
        if getattr(self.model, "log_ent_coef", None) is not None:
            with torch.no_grad():
                self.model.log_ent_coef.clamp_(min=self.log_floor)
        return True


class RecordScalars(EnvStepCallback):
    """Every ``every`` env steps, record what ``scalars(callback)`` returns (e.g. Q statistics on
    a replay batch, the norm of the chosen actions)."""

    def __init__(self, k: int, every: int, scalars: Callable[[BaseCallback], dict[str, float]]) -> None:
        super().__init__(k, every)
        self.scalars = scalars

    def _on_step(self) -> bool:
        if self.due():
            for key, value in self.scalars(self).items():
                self.logger.record(key, value)
        return True


def q_statistics(critics: dict[str, Callable[[Any], torch.Tensor]], batch_size: int = 256):
    """A :class:`RecordScalars` function: ``q/NAME_mean`` and ``q/NAME_max`` of each critic
    (``fn(replay batch) -> Q [B]``) on one replay batch."""

    @torch.no_grad()
    def scalars(cb: BaseCallback) -> dict[str, float]:
        buffer = getattr(cb.model, "replay_buffer", None)
        if buffer is None or buffer.size() == 0:
            return {}
        data = buffer.sample(batch_size)
        out = {}
        for name, fn in critics.items():
            q = fn(data)
            out[f"q/{name}_mean"], out[f"q/{name}_max"] = q.mean().item(), q.max().item()
        return out

    return scalars


class PeriodicEval(EnvStepCallback):
    """Evaluate on the same episodes every ``every`` env steps: TensorBoard ``eval/*``, one line
    in ``evals.jsonl`` (lines after the step being resumed are dropped), the bar's postfix."""

    def __init__(
        self,
        k: int,
        every: int,
        evaluate: Callable[[], dict],
        evals_path: Path | None,
        clock: WallClock,
        bar: ProgressBar | None = None,
    ) -> None:
        super().__init__(k, every)
        self.evaluate, self.clock, self.bar = evaluate, clock, bar
        self.evals_path = None if evals_path is None else Path(evals_path)  # None: another process writes it

    def _on_training_start(self) -> None:
        super()._on_training_start()
        if self.evals_path is not None:
            trim_evals(self.evals_path, self.env_steps)

    def _on_step(self) -> bool:
        if not self.due():
            return True
        summary = self.evaluate()
        row = {k: summary[k] for k in ("success_rate", "return_mean", "episodes")}
        also = [k for k in summary if k.startswith("also_")]  # SB3Method.also_evaluate
        for extra in ("validation", "deployed", *also):  # --final guarded, then the other forms
            if extra in summary:
                row[extra] = summary[extra]
                self.record(f"eval/{extra}", summary[extra])
        if self.evals_path is not None:
            row = {"env_steps": self.env_steps, **row, "wall_s": round(self.clock.seconds, 1)}
            append_eval(self.evals_path, row)
        self.logger.record("eval/return_mean", summary["return_mean"])
        if summary["success_rate"] is not None:
            self.logger.record("eval/success_rate", summary["success_rate"])
            if self.bar is not None:  # with --final guarded, also what policy/ would hold now
                shown = {"success": f"{summary['success_rate']:.2f}"}
                if "deployed" in summary:
                    shown["deployed"] = f"{summary['deployed']['success_rate']:.2f}"
                self.bar.bar.set_postfix(ordered_dict=shown)
        self.logger.dump(self.num_timesteps)
        return True

    def record(self, prefix: str, scores: dict) -> None:
        self.logger.record(f"{prefix}_return_mean", scores["return_mean"])
        if scores["success_rate"] is not None:
            self.logger.record(f"{prefix}_success_rate", scores["success_rate"])


class Checkpointer(EnvStepCallback):
    """Checkpoint every ``every`` env steps, and on a stop request (SIGTERM, Ctrl-C), at the start
    of a rollout: the last gradient step has finished and the next transition is not yet taken,
    so a resumed run continues exactly where this one would have."""

    def __init__(
        self,
        k: int,
        every: int,
        save: Callable[[], None],
        resume_hint: str,
        agree: Callable[[bool], bool] = lambda flag: flag,
    ) -> None:
        super().__init__(k, every)
        self.save, self.resume_hint, self.agree = save, resume_hint, agree

    def _on_rollout_start(self) -> None:
        if self.agree(stop_requested()):  # several processes stop together, at the same step
            self.save()
            raise RunInterrupted(f"interrupted at {self.env_steps} env steps; continue with: {self.resume_hint}")
        if self.due():
            self.save()
