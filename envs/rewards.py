"""Reward wrappers: built-ins, user functions, and the ``--reward`` spec that composes them.

A spec is one or more terms joined by ``+``, applied left to right (innermost first)::

    --reward sparse_success
    --reward "sparse_success(terminate=True)+time_penalty(penalty=0.01)"
    --reward my_rewards:shaped                 # fn(obs, action, reward, info) -> float
    --reward "my_rewards:MyWrapper(scale=2)"   # a gymnasium.Wrapper subclass

Arguments are Python literals (numbers, strings, booleans) and are never evaluated as code.
``module:name`` is imported from the working directory or the installed packages.
"""

from __future__ import annotations

import ast
import importlib
import math
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from dpft.base_policies.infra.errors import DpftError
from dpft.base_policies.infra.registry import import_from_working_dir, load_entry_point


class RewardError(DpftError):
    """A reward spec that cannot be parsed or imported, or a reward that is not finite."""


REWARDS: dict[str, type[gym.Wrapper]] = {}


def register_reward(name: str):
    """Class decorator: make a reward wrapper available as ``--reward NAME``. Another package
    can instead name its wrapper class in a ``dpft.rewards`` entry point."""

    def deco(cls):
        REWARDS[name] = cls
        return cls

    return deco


@register_reward("dense")
class DenseReward(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """The task's own reward, unchanged (useful as an explicit default)."""


@register_reward("sparse_success")
class SparseSuccess(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """1 on a step where ``info["success"]`` is true, else 0; optionally end the episode there.

    >>> env = SparseSuccess(gym.make("Pendulum-v1"))
    >>> _ = env.reset(seed=0)
    >>> env.step(np.zeros(1, np.float32))[1]
    0.0
    """

    def __init__(self, env: gym.Env, terminate: bool = False) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, terminate=terminate)
        gym.Wrapper.__init__(self, env)
        self.terminate = terminate

    def step(self, action):
        obs, _, terminated, truncated, info = self.env.step(action)
        success = bool(info.get("success", False))
        return obs, float(success), terminated or (self.terminate and success), truncated, info


@register_reward("success_bonus")
class SuccessBonus(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Add ``bonus`` to the reward on success steps."""

    def __init__(self, env: gym.Env, bonus: float = 1.0) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, bonus=bonus)
        gym.Wrapper.__init__(self, env)
        self.bonus = bonus

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, float(reward) + self.bonus * bool(info.get("success", False)), terminated, truncated, info


@register_reward("time_penalty")
class TimePenalty(gym.RewardWrapper, gym.utils.RecordConstructorArgs):
    """Subtract ``penalty`` every step (rewards finishing sooner)."""

    def __init__(self, env: gym.Env, penalty: float = 0.01) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, penalty=penalty)
        gym.RewardWrapper.__init__(self, env)
        self.penalty = penalty

    def reward(self, reward):
        return float(reward) - self.penalty


@register_reward("action_penalty")
class ActionPenalty(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Subtract ``coef * ||action||^2`` (discourages jerky, large actions)."""

    def __init__(self, env: gym.Env, coef: float = 0.01) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, coef=coef)
        gym.Wrapper.__init__(self, env)
        self.coef = coef

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, float(reward) - self.coef * float(np.sum(np.square(action))), terminated, truncated, info


@register_reward("scale")
class ScaleClip(gym.RewardWrapper, gym.utils.RecordConstructorArgs):
    """``clip(scale * reward, low, high)``."""

    def __init__(self, env: gym.Env, scale: float = 1.0, low: float = -math.inf, high: float = math.inf) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, scale=scale, low=low, high=high)
        gym.RewardWrapper.__init__(self, env)
        self.scale, self.low, self.high = scale, low, high

    def reward(self, reward):
        return float(min(max(self.scale * float(reward), self.low), self.high))


class FunctionReward(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Replace the reward with ``fn(obs, action, reward, info)``, where ``obs`` is the
    observation after the step. A non-finite or non-numeric result is an error."""

    def __init__(self, env: gym.Env, fn: Callable[..., float], name: str = "") -> None:
        gym.utils.RecordConstructorArgs.__init__(self, fn=fn, name=name)
        gym.Wrapper.__init__(self, env)
        self.fn, self.name = fn, name or getattr(fn, "__name__", "reward function")

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        try:
            value = self.fn(obs, action, reward, info)
        except Exception as e:
            raise RewardError(f"reward function {self.name} raised {type(e).__name__}: {e}") from None
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise RewardError(f"reward function {self.name} returned {value!r}; it must return a float") from None
        if not math.isfinite(value):
            raise RewardError(f"reward function {self.name} returned {value}; rewards must be finite")
        return obs, value, terminated, truncated, info


def _parse_term(term: str) -> tuple[str, dict[str, Any]]:
    term = term.strip()
    if "(" not in term:
        return term, {}
    name = term[: term.index("(")].strip()
    try:
        call = ast.parse(f"f{term[term.index('(') :]}", mode="eval").body
        if not isinstance(call, ast.Call) or call.args:
            raise ValueError("use keyword arguments, e.g. time_penalty(penalty=0.01)")
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    except (SyntaxError, ValueError) as e:
        raise RewardError(f"cannot parse reward term {term!r}: {e}") from None
    return name, kwargs


def _import(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    import_from_working_dir()
    try:
        mod = importlib.import_module(module)
    except Exception as e:
        raise RewardError(f"cannot import module {module!r} for --reward {ref} ({type(e).__name__}: {e})") from None
    if not hasattr(mod, attr):
        raise RewardError(f"module {module!r} has no attribute {attr!r} (from --reward {ref})")
    return getattr(mod, attr)


def resolve_reward(spec: str | None) -> Callable[[gym.Env], gym.Env]:
    """Turn a ``--reward`` spec into a function that wraps an env; validates eagerly so a bad
    spec fails before any training starts."""
    if not spec:
        return lambda env: env
    builders = []
    for term in spec.split("+"):
        name, kwargs = _parse_term(term)
        if ":" in name:
            target = _import(name)
            if isinstance(target, type) and issubclass(target, gym.Wrapper):
                builders.append((target, kwargs, name))
            elif callable(target):
                if kwargs:
                    raise RewardError(f"reward function {name} takes no arguments in the spec")
                builders.append((None, {"fn": target, "name": name}, name))
            else:
                raise RewardError(f"{name} is neither a function nor a gymnasium.Wrapper subclass")
        elif (wrapper := REWARDS.get(name) or load_entry_point("dpft.rewards", name)) is not None:
            builders.append((wrapper, kwargs, name))
        else:
            raise RewardError(
                f"unknown reward {name!r}; built-ins: {sorted(REWARDS)}, or 'module:function' for your own"
            )

    def wrap(env: gym.Env) -> gym.Env:
        for cls, kwargs, name in builders:
            try:
                env = FunctionReward(env, **kwargs) if cls is None else cls(env, **kwargs)
            except TypeError as e:
                raise RewardError(f"bad arguments for reward {name}: {e}") from None
        return env

    return wrap
