"""User-facing errors.

Every problem a user can fix (a missing file, a corrupt checkpoint, a dataset with a NaN,
an unknown task id) is raised as a :class:`DpftError` subclass whose message says what to
fix. The CLI prints the message on one line and exits with status 2 instead of showing a
traceback; library users can catch the class.
"""

from __future__ import annotations


class DpftError(Exception):
    """Base class for errors that the user can fix; the message says how."""


class CheckpointError(DpftError):
    """A policy folder or training checkpoint is missing, corrupt or incompatible."""


class DatasetError(DpftError):
    """A demonstration file is missing, has the wrong layout, or holds bad values."""


class ConfigError(DpftError):
    """A configuration value is invalid."""


class TaskError(DpftError):
    """Unknown task id, a missing optional dependency, or a policy that does not fit a task."""


class TrainingError(DpftError):
    """Training cannot go on (e.g. the loss became NaN); the message says what to change."""
