"""Plug-in discovery through package entry points, so a third-party package can add a policy
type, task family, reward or ``dpft`` command by declaring it in its own ``pyproject.toml``::

    [project.entry-points."dpft.policies"]
    my_type = "my_pkg.policy:MyPolicy"        # imported when a checkpoint says type: my_type

dpft declares its own built-ins the same way. Groups: ``dpft.policies``, ``dpft.tasks``,
``dpft.rewards``, ``dpft.commands``. Loading an entry point imports its module, whose
``register_*`` decorator adds it to the in-process registry; explicit ``register_*`` calls in
Python work too and take precedence.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any


def _group(group: str) -> list[EntryPoint]:
    return list(entry_points(group=group))


def load_entry_point(group: str, name: str) -> Any | None:
    """Import the entry point ``name`` of ``group`` and return what it names (None if absent)."""
    for ep in _group(group):
        if ep.name == name:
            return ep.load()
    return None


def entry_point_names(group: str) -> list[str]:
    return sorted(ep.name for ep in _group(group))


def import_from_working_dir() -> None:
    """Let ``module:name`` references (``--reward my_rewards:fn``, task ``my_tasks:MyEnv-v0``)
    find modules in the folder dpft is run from, as ``python -m`` would, without PYTHONPATH."""
    import sys
    from pathlib import Path

    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def multi_process(run: Any) -> Any:
    """Mark a command's run function as one that runs under ``accelerate launch`` with several
    processes (``dpft <command> --processes N``); the CLI refuses the others there with a message."""
    run.multi_process = True
    return run


def all_cores(run: Any) -> Any:
    """Mark a command that should use every core it has (BC training at large batches) rather
    than dpft's default of one torch thread per process (see ``dpft.base_policies.infra.threads``)."""
    run.all_cores = True
    return run
