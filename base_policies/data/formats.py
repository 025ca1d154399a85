"""Readers (and the native writer) for demonstration files.

Native format -- HDF5 in robomimic's layout::

    data/                       attrs: env_args (JSON string), total (number of steps)
      demo_0/                   attrs: num_samples
        obs                     [T, obs_dim] dataset, or a group of [T, ...] datasets
        actions                 [T, action_dim]
        rewards                 [T]
        dones                   [T]
      demo_1/ ...
    mask/                       optional (robomimic): mask/<filter_key> lists demo names as bytes
      train, valid, ...

Demos are read in numeric order (demo_2 before demo_10); ``filter_key`` keeps only those
listed in ``mask/<filter_key>``, as robomimic's ``--filter_key`` does. When ``obs`` is a group
(robomimic files name e.g. ``object`` and ``robot0_eef_pos``), its keys are flattened and
concatenated in the order given by ``obs_keys``, else in the order recorded in
``env_args["obs_keys"]``. A group of several keys with neither is refused: the environment
emits its own order, and a policy trained on another one is silently wrong. The keys used are
kept in ``Demonstrations.obs_keys``.

Also read: ``.npz`` files (one episode per file with ``obs`` and ``actions``, or several
episodes concatenated with an ``episode_ends`` array, as in Diffusion Policy's replay
buffers; a folder of ``.npz`` files is one dataset), and local Minari datasets (a folder
with ``data/main_data.hdf5``, or that file itself; its ``observations`` hold one more entry
than ``actions``, and the last one is dropped; an ``observations`` group is concatenated in
sorted key order by default -- the order of a gymnasium ``Dict`` space built from a dict).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dpft.base_policies.data.env_args import read_obs_keys
from dpft.base_policies.data.episodes import Demonstrations, Episode, check_consistent, make_episode
from dpft.base_policies.infra.errors import DatasetError
from dpft.base_policies.infra.files import HDF5_ERRORS, interpreting, read_json
from dpft.base_policies.infra.state_io import publish_mode, reach, remove_leftovers

Reader = Callable[[Path, Sequence[str] | None], Demonstrations]


def _natural_key(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _robomimic_obs_keys(
    obs: h5py.Group | h5py.Dataset, requested: Sequence[str] | None, stored: Sequence[str] | None, where: str
) -> tuple[str, ...] | None:
    """The keys to concatenate for one demo's ``obs`` (None when it is one dataset)."""
    if isinstance(obs, h5py.Dataset):
        return None
    if requested:
        return tuple(requested)
    if stored:
        return tuple(stored)
    available = sorted(obs.keys())
    if len(available) == 1:
        return tuple(available)
    raise DatasetError(
        f"{where} is a group of {len(available)} observation keys {available} and the file does not record "
        "their order (env_args has no 'obs_keys'); pass --obs-keys KEY [KEY ...] in the order the environment "
        "emits them"
    )


def _read_obs(group: h5py.Group | h5py.Dataset, keys: Sequence[str] | None, where: str) -> np.ndarray:
    if isinstance(group, h5py.Dataset):
        return group[()]
    keys = list(keys) if keys else sorted(group.keys())
    missing = [k for k in keys if k not in group]
    if missing:
        raise DatasetError(f"{where}: observation key(s) {missing} not found; available: {sorted(group.keys())}")
    parts = [np.asarray(group[k][()], dtype=np.float32) for k in keys]
    lengths = {k: len(p) if p.ndim else 0 for k, p in zip(keys, parts)}
    if len(set(lengths.values())) > 1 or 0 in lengths.values():
        raise DatasetError(
            f"{where}: the observation keys have different lengths {lengths}; every key needs one row per step"
        )
    return np.concatenate([p.reshape(len(p), -1) for p in parts], axis=1)


def _require(group: h5py.Group, key: str, where: str) -> Any:
    if key not in group:
        raise DatasetError(f"{where}: missing key {key!r} (found {sorted(group.keys())})")
    return group[key]


DAMAGED = "the file is damaged; write it again (dpft collect) or restore a copy"


def read_robomimic_hdf5(
    path: Path, obs_keys: Sequence[str] | None = None, filter_key: str | None = None
) -> Demonstrations:
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{path} is not a readable HDF5 file ({e})") from None
    with f, interpreting(path, "demonstration file", DatasetError, DAMAGED, HDF5_ERRORS):
        if "data" not in f:
            if any(k.startswith("episode_") for k in f):
                if filter_key is not None:
                    raise DatasetError(f"{path} is a Minari file; --filter-key applies only to robomimic files")
                return read_minari(path, obs_keys)
            raise DatasetError(f"{path}: no 'data' group; expected robomimic layout data/demo_K/{{obs,actions}}")
        data = f["data"]
        attrs = {k: _attr(v) for k, v in data.attrs.items()}
        stored = read_obs_keys(attrs.get("env_args"), path.name)
        names = sorted((k for k in data if k.startswith("demo")), key=_natural_key)
        if filter_key is not None:
            names = _filter(f, names, filter_key, path.name)
        episodes, used = [], None
        for name in names:
            demo = data[name]
            where = f"{path.name}: data/{name}"
            group = _require(demo, "obs", where)
            keys = _robomimic_obs_keys(group, obs_keys, stored, where + "/obs")
            if episodes and keys != used:
                raise DatasetError(f"{where}/obs has observation keys {keys} but data/{names[0]}/obs has {used}")
            used = keys
            obs = _read_obs(group, keys, where + "/obs")
            actions = _require(demo, "actions", where)[()]
            rewards = demo["rewards"][()] if "rewards" in demo else None
            dones = demo["dones"][()] if "dones" in demo else None
            episode = make_episode(name, path.name, obs, actions, rewards, dones)
            if "success_step" in demo.attrs:
                episode.success_step = int(demo.attrs["success_step"])
            episodes.append(episode)
    return check_consistent(Demonstrations(episodes, attrs, str(path), obs_keys=used))


def _filter(f: h5py.File, names: list[str], filter_key: str, source: str) -> list[str]:
    """``names`` restricted to those listed in ``mask/<filter_key>`` (kept in numeric order)."""
    masks = sorted(f["mask"].keys()) if isinstance(f.get("mask"), h5py.Group) else []
    if filter_key not in masks:
        raise DatasetError(
            f"{source}: unknown filter key {filter_key!r}; the file has "
            + (f"mask/{{{', '.join(masks)}}}" if masks else "no mask group, so --filter-key cannot apply")
        )
    listed = {n.decode() if isinstance(n, bytes) else str(n) for n in np.atleast_1d(f["mask"][filter_key][()])}
    absent = sorted(listed - set(names), key=_natural_key)
    if absent:
        raise DatasetError(f"{source}: mask/{filter_key} lists demo(s) {absent[:5]} that are not in data/")
    if not listed:
        raise DatasetError(f"{source}: mask/{filter_key} lists no demos")
    return [n for n in names if n in listed]


def _attr(v: Any) -> Any:
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str):
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def write_robomimic_hdf5(
    path: Path, episodes: Sequence[Episode], env_args: dict[str, Any], masks: dict[str, list[str]] | None = None
) -> None:
    """Write the native format (``obs`` as one flat dataset per demo) atomically; ``masks``
    become robomimic's ``mask/<filter_key>`` lists of demo names."""
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)  # what a killed write of this file left
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        reach("file-tmp-created")
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            data.attrs["env_args"] = json.dumps(env_args)
            data.attrs["total"] = int(sum(len(e) for e in episodes))
            for i, ep in enumerate(episodes):
                g = data.create_group(f"demo_{i}")
                g.attrs["num_samples"] = len(ep)
                if ep.success_step is not None:
                    g.attrs["success_step"] = int(ep.success_step)
                g.create_dataset("obs", data=ep.obs.astype(np.float32))
                g.create_dataset("actions", data=ep.actions.astype(np.float32))
                n = len(ep)
                rewards = ep.rewards if ep.rewards is not None else np.zeros(n, np.float32)
                dones = ep.dones if ep.dones is not None else np.eye(1, n, n - 1, dtype=bool)[0]
                g.create_dataset("rewards", data=rewards.astype(np.float32))
                g.create_dataset("dones", data=dones.astype(bool))
            for key, names in (masks or {}).items():
                f.create_dataset(f"mask/{key}", data=np.array([n.encode() for n in names], dtype="S"))
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        publish_mode(Path(tmp))
        reach("file-durable")
        os.replace(tmp, path)
        reach("file-published")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _npz_episodes(path: Path) -> list[Episode]:
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path} is not a readable .npz file ({e})") from None
    with z:
        for key in ("obs", "actions"):
            if key not in z.files:
                raise DatasetError(f"{path.name}: missing key {key!r} (found {sorted(z.files)})")
        arrays = {k: z[k] for k in z.files}
    ends = arrays.get("episode_ends")
    if ends is None:
        bounds = [(0, len(arrays["actions"]))]
    else:
        ends = [int(e) for e in ends]
        bounds = list(zip([0, *ends[:-1]], ends))
    eps = []
    for i, (s, e) in enumerate(bounds):
        name = path.stem if ends is None else f"{path.stem}[episode {i}]"
        sl = {k: arrays[k][s:e] if k in arrays else None for k in ("obs", "actions", "rewards", "dones")}
        eps.append(make_episode(name, path.name, sl["obs"], sl["actions"], sl["rewards"], sl["dones"]))
    return eps


def read_npz(path: Path, obs_keys: Sequence[str] | None = None) -> Demonstrations:
    files = sorted(path.glob("*.npz"), key=lambda p: _natural_key(p.name)) if path.is_dir() else [path]
    episodes = [ep for f in files for ep in _npz_episodes(f)]
    return check_consistent(Demonstrations(episodes, {}, str(path)))


def read_minari(path: Path, obs_keys: Sequence[str] | None = None) -> Demonstrations:
    file = path / "data" / "main_data.hdf5" if path.is_dir() else path
    if not file.exists():
        raise DatasetError(f"{path}: no data/main_data.hdf5; is this a local Minari dataset folder?")
    attrs: dict[str, Any] = {}
    meta = file.parent.parent / "metadata.json"
    if meta.exists():
        attrs = read_json(meta, "Minari metadata")
    episodes, used = [], None
    with interpreting(file, "Minari data file", DatasetError, DAMAGED, HDF5_ERRORS), h5py.File(file, "r") as f:
        for name in sorted((k for k in f if k.startswith("episode_")), key=_natural_key):
            g = f[name]
            where = f"{file.name}: {name}"
            group = _require(g, "observations", where)
            used = None if isinstance(group, h5py.Dataset) else tuple(obs_keys or sorted(group.keys()))
            obs = _read_obs(group, used, where + "/observations")
            actions = _require(g, "actions", where)[()]
            if len(obs) == len(actions) + 1:
                obs = obs[:-1]
            dones = None
            if "terminations" in g and "truncations" in g:
                dones = np.logical_or(g["terminations"][()], g["truncations"][()])
            rewards = g["rewards"][()] if "rewards" in g else None
            episodes.append(make_episode(name, file.name, obs, actions, rewards, dones))
    return check_consistent(Demonstrations(episodes, attrs, str(path), obs_keys=used))


def load_demonstrations(
    path: str | Path, obs_keys: Sequence[str] | None = None, filter_key: str | None = None
) -> Demonstrations:
    """Read a demonstration file or folder, choosing the reader from its name/contents.
    ``filter_key`` (robomimic HDF5 only) keeps the demos listed in ``mask/<filter_key>``."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset {path} does not exist")
    if path.suffix in (".hdf5", ".h5"):
        return read_robomimic_hdf5(path, obs_keys, filter_key)
    if filter_key is not None:
        raise DatasetError(f"{path}: --filter-key applies only to robomimic .hdf5 files (it names one of mask/*)")
    if path.suffix == ".npz" or (path.is_dir() and any(path.glob("*.npz"))):
        return read_npz(path, obs_keys)
    if path.is_dir() and (path / "data" / "main_data.hdf5").exists():
        return read_minari(path, obs_keys)
    raise DatasetError(
        f"cannot tell the format of {path}: expected a .hdf5/.h5 file (robomimic layout), a .npz file or "
        "folder of them, or a Minari dataset folder"
    )
