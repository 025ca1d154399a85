"""Task ids of the form ``family:name`` and the one ``make`` that builds them.

==============  ===========================================================================
``gym:``        gymnasium MuJoCo locomotion (``Hopper-v5``, ``Walker2d-v5``, ...)
``metaworld:``  Meta-World v3 single tasks (``push-v3``, ...), random start every reset
``robotics:``   gymnasium-robotics (``FetchPush-v4``, ``AdroitHandDoor-v1``, ...)
anything else   any registered gymnasium id, e.g. ``CartPole-v1`` or ``my_pkg.envs:MyEnv-v0``
                (gymnasium imports ``my_pkg.envs`` first, which registers the env)
==============  ===========================================================================

Every task comes out with the same contract (see :mod:`envs.contract`). Add a family with
:func:`register_family`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym

from dpft.base_policies.infra.errors import TaskError
from dpft.base_policies.infra.registry import import_from_working_dir, load_entry_point
from dpft.envs.contract import FlatFloatObservation, SuccessInfo
from dpft.envs.shift import ShiftedDynamics, split_shift


@dataclass(frozen=True)
class TaskId:
    family: str
    name: str

    def __str__(self) -> str:
        return f"{self.family}:{self.name}" if self.family else self.name


FamilyMaker = Callable[..., gym.Env]
FAMILIES: dict[str, FamilyMaker] = {}
DEFAULT_EPISODE_STEPS: dict[str, int] = {}


def register_family(name: str, default_episode_steps: int | None = None):
    """Decorator: ``fn(name, max_episode_steps, render_mode) -> gym.Env`` serves ``name:...`` ids.
    Another package names its module in a ``dpft.tasks`` entry point (``myfamily = "my_pkg.tasks"``);
    the module is imported the first time a ``myfamily:...`` id is used, and registers itself."""

    def deco(fn: FamilyMaker) -> FamilyMaker:
        FAMILIES[name] = fn
        if default_episode_steps:
            DEFAULT_EPISODE_STEPS[name] = default_episode_steps
        return fn

    return deco


def parse_task_id(task_id: str) -> TaskId:
    family, sep, name = task_id.partition(":")
    if sep and family not in FAMILIES:
        load_entry_point("dpft.tasks", family)  # another package's family registers itself on import
    if sep and family in FAMILIES:
        if not name:
            raise TaskError(f"task id {task_id!r} has no task name after '{family}:'")
        return TaskId(family, name)
    return TaskId("", task_id)


def _gym_make(env_id: str, max_episode_steps: int | None, render_mode: str | None, hint: str) -> gym.Env:
    try:
        return gym.make(env_id, max_episode_steps=max_episode_steps, render_mode=render_mode)
    except gym.error.DependencyNotInstalled as e:
        raise TaskError(f"task {env_id!r} needs an optional dependency: {e}") from None
    except ModuleNotFoundError as e:
        missing = e.name or (re.findall(r"No module named '([^']+)'", str(e)) or [""])[0]
        if missing and env_id.partition(":")[0].startswith(missing):  # the module the id names is not there
            raise TaskError(f"unknown task {env_id!r} ({e}). {hint}") from None
        raise TaskError(f"task {env_id!r} could not be created: a module it needs is missing ({e})") from None
    except gym.error.Error as e:
        raise TaskError(f"unknown task {env_id!r} ({e}). {hint}") from None
    except (ImportError, AttributeError) as e:  # the simulator failed to load, e.g. MUJOCO_GL names a missing library
        gl = (
            f" (MUJOCO_GL={os.environ['MUJOCO_GL']}: is that rendering library installed?)"
            if "MUJOCO_GL" in os.environ
            else ""
        )
        raise TaskError(f"task {env_id!r} could not be created: {type(e).__name__}: {e}{gl}") from None


HINT = (
    "Use 'gym:<MuJoCo id>', 'metaworld:<task>-v3', 'robotics:<Fetch/Adroit id>', or any registered "
    "gymnasium id (a module that registers it can be named as 'module:EnvId-v0')."
)


@register_family("gym")
def _make_gym(name: str, max_episode_steps: int | None = None, render_mode: str | None = None) -> gym.Env:
    return _gym_make(name, max_episode_steps, render_mode, HINT)


@register_family("metaworld", default_episode_steps=200)
def _make_metaworld(name: str, max_episode_steps: int | None = None, render_mode: str | None = None) -> gym.Env:
    from dpft.envs.metaworld_task import MetaWorldTask

    return MetaWorldTask(name, max_episode_steps or 200, render_mode)


@register_family("robotics")
def _make_robotics(name: str, max_episode_steps: int | None = None, render_mode: str | None = None) -> gym.Env:
    try:
        import gymnasium_robotics
    except ImportError as e:
        raise TaskError(
            f"robotics tasks need gymnasium-robotics ({e}); reinstall dpft (it depends on gymnasium-robotics==1.4.2)"
        ) from None
    gym.register_envs(gymnasium_robotics)
    env = _gym_make(name, max_episode_steps, render_mode, HINT)
    return SuccessInfo(env, key="is_success" if name.startswith("Fetch") else "success")


def make(task_id: str, max_episode_steps: int | None = None, render_mode: str | None = None) -> gym.Env:
    """Build a task with the uniform contract: flat float32 Box obs, ``info["success"]``
    where defined, ``terminated`` distinct from ``truncated``. A ``+action_gain=G`` /
    ``+action_offset=B`` suffix shifts the task's dynamics (:mod:`envs.shift`)."""
    plain, shift = split_shift(task_id)
    env = _make_plain(plain, max_episode_steps, render_mode)
    return ShiftedDynamics(env, **shift) if shift else env


def _make_plain(task_id: str, max_episode_steps: int | None, render_mode: str | None) -> gym.Env:
    tid = parse_task_id(task_id)
    try:
        if tid.family:
            steps = max_episode_steps or DEFAULT_EPISODE_STEPS.get(tid.family)
            env = FAMILIES[tid.family](tid.name, max_episode_steps=steps, render_mode=render_mode)
        else:
            if ":" in tid.name:
                import_from_working_dir()  # 'my_tasks:MyEnv-v0' imports my_tasks, as --reward does
            env = _gym_make(tid.name, max_episode_steps, render_mode, HINT)
    except RuntimeError as e:  # MuJoCo refuses a MUJOCO_GL it does not know when it is first imported
        if "MUJOCO_GL" not in str(e):
            raise
        raise TaskError(f"{e}; unset MUJOCO_GL or set it to egl, osmesa or glfw") from None
    if not isinstance(env.action_space, gym.spaces.Box):
        env.close()
        raise TaskError(f"task {task_id!r} has a {type(env.action_space).__name__} action space; dpft needs a Box")
    if (
        not isinstance(env.observation_space, gym.spaces.Box)
        or env.observation_space.dtype != "float32"
        or len(env.observation_space.shape) != 1
    ):
        env = FlatFloatObservation(env)
    return env


def task_defines_success(task_id: str) -> bool:
    """Locomotion tasks have no success flag; everything else here reports one."""
    return parse_task_id(split_shift(task_id)[0]).family != "gym"
