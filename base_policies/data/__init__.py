"""Demonstration datasets: readers, the native writer and training windows."""

from dpft.base_policies.data.episodes import Demonstrations, Episode, make_episode
from dpft.base_policies.data.formats import load_demonstrations, write_robomimic_hdf5
from dpft.base_policies.data.windows import Windows, make_windows, split_episodes

__all__ = [
    "Demonstrations",
    "Episode",
    "Windows",
    "load_demonstrations",
    "make_episode",
    "make_windows",
    "split_episodes",
    "write_robomimic_hdf5",
]
