"""Simulated demonstrators of mixed skill, for datasets in the style of robomimic's multi-human sets.

robomimic's MH datasets (300 demos per task from six operators, grouped "better", "okay" and
"worse") are what the bases that DSRL steers were trained on: imperfect because the people were,
not because there were few demos. A scripted expert alone gives near-perfect, unimodal data, so
here each *demonstrator* is the task's expert with a fixed skill level:

* ``action_noise``: std of Gaussian noise on every executed action (an unsteady hand);
* ``aim_error`` (Meta-World): std, in metres, of a per-episode offset of the object position the
  expert sees; it reaches for the wrong place by the same amount all episode, as a person who
  misjudges depth does, so some episodes succeed and some miss;
* ``speed`` (Meta-World): scale of the hand motion (a slower operator);
* ``hesitate``: per-step probability of repeating the previous action (pauses, sticky control);
* ``detour`` (Meta-World): radius, in metres, of a random waypoint above the start that the hand
  visits before the task, so the data holds more than one way to begin.

Episode ``k`` of env slot ``s`` (of ``E`` slots) is demonstrated by
``demonstrators[(k * E + s) % len(demonstrators)]``, so every demonstrator gives the same share of
the episodes (``dpft collect --success-only`` keeps the same number of *successes* from each, as
robomimic's MH sets hold only successful demos, 50 per operator), and draws all its randomness
from a generator seeded by ``(seed, s, k)``: the data is a function of the seed and the number of
env slots only, whichever process runs a slot.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from dpft.base_policies.infra.errors import ConfigError
from dpft.envs.experts import Expert, expert_on_slots

# Meta-World v3 observation layout (39-d): hand xyz, gripper, object xyz + quaternion, a second
# object (7), the same 18 of the previous frame, goal xyz. Actions: hand xyz delta, grip.
_MW_OBJECT, _MW_PREV_OBJECT = slice(4, 7), slice(22, 25)
_DETOUR_GAIN, _DETOUR_REACHED, _DETOUR_MAX_STEPS = 10.0, 0.02, 60


@dataclass(frozen=True)
class Demonstrator:
    """One simulated operator: the task's expert with a fixed skill level (see the module doc)."""

    name: str
    action_noise: float = 0.0
    aim_error: float = 0.0
    speed: float = 1.0
    hesitate: float = 0.0
    detour: float = 0.0

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(
                f"demonstrator name {self.name!r}: use letters, digits, '-' or '_' (it names mask/<name>)"
            )
        if min(self.action_noise, self.aim_error, self.hesitate, self.detour) < 0 or self.hesitate >= 1:
            raise ConfigError(
                f"demonstrator {self.name!r}: noise, aim error and detour must be >= 0, hesitate in [0, 1)"
            )
        if not 0 < self.speed <= 1:
            raise ConfigError(f"demonstrator {self.name!r}: speed must be in (0, 1]")

    @property
    def metaworld_only(self) -> bool:
        return self.aim_error > 0 or self.speed != 1 or self.detour > 0


# robomimic MH's three quality groups. Per-task success of each group, and the bases trained on
# them, are in experiments/results/base_policies.md. "mh-hard" widens the gaps for tasks where
# even the "worse" group of "mh" nearly always succeeds (drawer-open, button-press).
MIXES: dict[str, tuple[Demonstrator, ...]] = {
    "mh": (
        Demonstrator("better", action_noise=0.1),
        Demonstrator("okay", action_noise=0.3, aim_error=0.015, speed=0.8, hesitate=0.1),
        Demonstrator("worse", action_noise=0.4, aim_error=0.02, speed=0.7, hesitate=0.2, detour=0.1),
    ),
    "mh-hard": (
        Demonstrator("better", action_noise=0.1),
        Demonstrator("okay", action_noise=0.3, aim_error=0.03, speed=0.8, hesitate=0.1),
        Demonstrator("worse", action_noise=0.5, aim_error=0.05, speed=0.6, hesitate=0.2, detour=0.1),
    ),
}


def load_demonstrators(spec: str) -> tuple[Demonstrator, ...]:
    """A named mix (``mh``) or a JSON file: a list of objects with :class:`Demonstrator`'s fields."""
    if spec in MIXES:
        return MIXES[spec]
    path = Path(spec)
    if not path.suffix == ".json":
        raise ConfigError(f"--demonstrators {spec!r}: name a mix ({', '.join(MIXES)}) or a .json file")
    try:
        rows = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--demonstrators {spec}: no such file") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"--demonstrators {spec}: not readable JSON ({e})") from None
    known = {f.name for f in fields(Demonstrator)}
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ConfigError(f"--demonstrators {spec}: expected a non-empty list of objects with keys {sorted(known)}")
    out = []
    for row in rows:
        if unknown := set(row) - known:
            raise ConfigError(f"--demonstrators {spec}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        if "name" not in row:
            raise ConfigError(f"--demonstrators {spec}: every demonstrator needs a 'name'")
        try:
            out.append(Demonstrator(**{k: v if k == "name" else float(v) for k, v in row.items()}))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"--demonstrators {spec}: {e}") from None
    if len({d.name for d in out}) != len(out):
        raise ConfigError(f"--demonstrators {spec}: demonstrator names must differ")
    return tuple(out)


def describe(demonstrators: tuple[Demonstrator, ...]) -> list[dict[str, Any]]:
    return [asdict(d) for d in demonstrators]


@dataclass
class _Episode:
    """What one env slot's current episode needs: its demonstrator and its own random stream."""

    who: int
    rng: np.random.Generator
    aim: np.ndarray
    waypoint: np.ndarray | None = None  # drawn at the episode's first step (from the hand's start)
    detour_steps: int = 0
    previous: np.ndarray | None = None


class MixedDemonstrators:
    """A rollout chunk function (:mod:`dpft.finetune.common.rollout`) in which every episode is played by
    one of ``demonstrators``; its extra ``"demonstrator"`` is the index of the one playing.

    ``slots``: the global env slots this process runs (of ``total``), as in :class:`EnvSlots`."""

    def __init__(
        self,
        expert: Expert,
        demonstrators: tuple[Demonstrator, ...],
        seed: int,
        slots: tuple[int, ...],
        total: int,
        low: np.ndarray,
        high: np.ndarray,
        task: str,
        players: tuple[int, ...] | None = None,
    ) -> None:
        """``players``: the indices of the demonstrators that take turns (default all); a
        collection that keeps equal numbers of successes per demonstrator re-runs only those
        still short of theirs."""
        if not demonstrators:
            raise ConfigError("no demonstrators given")
        if any(d.metaworld_only for d in demonstrators) and not task.startswith("metaworld:"):
            raise ConfigError(
                f"aim_error, speed and detour need Meta-World's observation layout; {task} takes only "
                "action_noise and hesitate"
            )
        self.expert, self.demonstrators, self.seed = expert, demonstrators, seed
        self.slots, self.total, self.low, self.high = list(slots), total, low, high
        self.players = tuple(players) if players is not None else tuple(range(len(demonstrators)))
        self.started = np.zeros(len(slots), int)  # episodes begun per local env
        self.episodes: list[_Episode] = [self._begin(i) for i in range(len(slots))]

    def _begin(self, i: int) -> _Episode:
        slot, k = self.slots[i], self.started[i]
        self.started[i] += 1
        who = self.players[(k * self.total + slot) % len(self.players)]
        rng = np.random.default_rng([self.seed, slot, k])
        aim = (
            rng.normal(0.0, self.demonstrators[who].aim_error, 3) if self.demonstrators[who].aim_error else np.zeros(3)
        )
        return _Episode(who, rng, aim)

    def reset(self, done: np.ndarray | None) -> None:
        """Called by the rollout loop: ``None`` after the vector env's reset, else the envs whose
        episode just ended (their next episode begins with the next call)."""
        if done is None:
            self.started[:] = 0
            self.episodes = [self._begin(i) for i in range(len(self.slots))]
        else:
            for i in np.flatnonzero(done):
                self.episodes[i] = self._begin(i)

    def __call__(self, obs: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        obs = obs[:, -1].astype(np.float64)  # the current frame of each history
        seen = obs.copy()
        for i, ep in enumerate(self.episodes):
            if ep.aim.any():
                seen[i, _MW_OBJECT] += ep.aim
                seen[i, _MW_PREV_OBJECT] += ep.aim
        actions = np.asarray(expert_on_slots(self.expert, seen, self.slots, self.total), np.float64)
        for i, ep in enumerate(self.episodes):
            actions[i] = self._act(self.demonstrators[ep.who], ep, obs[i], actions[i])
        who = np.array([ep.who for ep in self.episodes])
        return actions.astype(np.float32)[:, None], {"demonstrator": who}

    def _act(self, d: Demonstrator, ep: _Episode, obs: np.ndarray, action: np.ndarray) -> np.ndarray:
        if d.detour > 0 and self._detouring(d, ep, obs):
            action = np.zeros_like(action)
            action[:3] = np.clip((ep.waypoint - obs[:3]) * _DETOUR_GAIN, -1, 1)
            action[3] = -1.0  # gripper open
        if d.speed != 1:
            action[:3] *= d.speed
        if d.action_noise > 0:
            action = action + ep.rng.normal(0.0, d.action_noise, action.shape)
        # one draw per step whatever the setting, so a demonstrator's stream does not depend on it
        if ep.rng.random() < d.hesitate and ep.previous is not None:
            action = ep.previous
        action = np.clip(action, self.low, self.high)
        ep.previous = action
        return action

    def _detouring(self, d: Demonstrator, ep: _Episode, obs: np.ndarray) -> bool:
        if ep.waypoint is None:  # the episode's first step: a waypoint on the upper half-sphere
            direction = ep.rng.normal(size=3)
            direction[2] = abs(direction[2])
            ep.waypoint = obs[:3] + d.detour * direction / np.linalg.norm(direction)
        if ep.detour_steps >= _DETOUR_MAX_STEPS or np.linalg.norm(ep.waypoint - obs[:3]) < _DETOUR_REACHED:
            ep.detour_steps = _DETOUR_MAX_STEPS  # reached once: back to the task for good
            return False
        ep.detour_steps += 1
        return True
