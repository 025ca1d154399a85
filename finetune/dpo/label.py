"""``dpft prefs label``: a local page where a person labels preference pairs by watching them.

The page (``label_page.html``) shows a pair's two rollouts side by side and takes left / right /
tie / skip by click or key. For half the pairs (fixed per pair id, :func:`shows_swapped`) the
stored ``rejected`` member is on the left, so the side never tells the person which rollout the
ranking preferred; answers are written in the stored order whatever the page showed (``left`` =
the stored ``chosen`` won, see :data:`prefs.ANSWERS`). Each answer is appended to
``<stem>.labels.jsonl`` and flushed to disk before the page moves on, so closing the tab or
stopping the server loses nothing, and :func:`prefs.read_prefs` applies the answers (source
``person``).

Order: pairs without an answer come first, in file order; a skipped pair comes back only once
every other pair has an answer (oldest skip first), so re-opening the page, or restarting the
server, resumes at the first unanswered pair. A pair with an answer can be shown again with
"back", and answered again: the last answer wins.

Videos are made on demand by replay: the task is reset with the rollout's reset seed and
stepped with its executed actions (every task here is deterministic given those), rendering
every ``every``-th step small and without shadows or reflections, which is several times faster
in software rendering. They are kept as VP8 WebM files (which every Chromium and Firefox play)
in ``<stem>.videos/``, named by a hash of everything that determines them, so a re-collected
file with the same rollout ids never shows a stale video. GL back ends are chosen as in
:mod:`dpft.finetune.common.video`: ``MUJOCO_GL``, else OSMesa, else EGL in a fresh process.

The server binds to 127.0.0.1 only, answers only requests addressed to that host name, and
takes answers only as JSON (which a cross-site form cannot send), so no other machine and no
other web page can read the rollouts or write labels.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import gymnasium as gym
import numpy as np
import tyro

from dpft.base_policies.infra.errors import ConfigError, DpftError
from dpft.base_policies.infra.ranges import check_ranges
from dpft.base_policies.infra.records import from_dict, to_dict
from dpft.envs.config import EnvConfig
from dpft.finetune.common.video import BACKENDS, RenderBackendError, _backend, _message, render_backend_failed
from dpft.finetune.dpo.prefs import Pair, Prefs, append_label, apply_labels, labels_path, read_labels, read_prefs

RENDER_VERSION = 1
"""Part of every video's cache key: change it when the way videos are rendered changes."""


@dataclass
class PrefsLabelConfig:
    """Label preference pairs in a browser: watch both rollouts, answer left / right / tie / skip."""

    RANGES: ClassVar[dict[str, str]] = {"port": "[0, 65535]", "size": "[16, 2048]", "every": ">= 1"}
    """Declared range of each numeric setting (dpft.base_policies.infra.ranges)."""

    file: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="FILE.hdf5")] = Path("prefs.hdf5")
    """Preference file (from `dpft prefs collect`, e.g. with --unlabelled); answers go to <stem>.labels.jsonl."""
    port: int = 8765
    """Port on 127.0.0.1 to serve the page on (0: any free port)."""
    size: int = 160
    """Width of the videos in pixels (even)."""
    every: int = 2
    """Render every k-th env step (fewer frames render faster; playback stays at real time)."""
    labeller: str = ""
    """Your name, stored with every answer (two labellers' files compare with `dpft prefs stats --agreement`)."""
    instructions: Path | None = None
    """A text file shown above the videos: what makes a rollout better, for this task."""

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.instructions is not None and not Path(self.instructions).is_file():
            raise ConfigError(f"--instructions {self.instructions} is not a file")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port ({self.port}) must be between 0 and 65535 (0: any free port)")
        if self.size < 32 or self.size % 2:
            raise ConfigError(f"--size ({self.size}) must be an even number of pixels >= 32, e.g. 160 or 224")
        if self.every < 1:
            raise ConfigError(f"--every ({self.every}) must be >= 1")


class LabelError(DpftError):
    """The labelling page cannot be served (a port in use, a task that cannot render)."""


# ----- videos -------------------------------------------------------------------------
def replay_frames(
    env_cfg: EnvConfig, reset_seed: int, actions: np.ndarray, size: int, every: int
) -> tuple[np.ndarray, float]:
    """Frames ``[T, H, W, 3]`` of a rollout replayed from its reset seed and executed actions (the
    reset frame, then every ``every``-th step and the last), and the frame rate that plays them at
    real time."""
    env = env_cfg.make_env(render_mode="rgb_array")
    try:
        if np.shape(actions)[1:] != env.action_space.shape:
            raise LabelError(
                f"the rollouts' actions have shape {np.shape(actions)[1:]} but task {env_cfg.task!r} takes "
                f"{env.action_space.shape}: the preference file's task attribute does not match its rollouts"
            )
        _small_and_plain(env, size)
        env.reset(seed=int(reset_seed))
        frames = [env.render()]
        for i, action in enumerate(actions, 1):
            _, _, terminated, truncated, _ = env.step(action)
            if i % every == 0 or i == len(actions) or terminated or truncated:
                frames.append(env.render())
            if terminated or truncated:
                break
        fps = float(env.metadata.get("render_fps") or 30) / every
    finally:
        env.close()
    return np.stack(frames).astype(np.uint8), fps


def _small_and_plain(env: gym.Env, size: int) -> None:
    """Render at ``size`` pixels without shadows and reflections, when the task's MuJoCo renderer
    can be found (gymnasium's MuJoCo envs, Meta-World); otherwise the encoder scales the frames."""
    inner: Any = env.unwrapped
    while inner is not None and not hasattr(inner, "mujoco_renderer"):
        inner = getattr(inner, "env", None)
    if inner is None:
        return
    renderer = inner.mujoco_renderer
    renderer.width = renderer.height = size  # read when the offscreen context is made, at the first render
    renderer.model.light_castshadow[:] = 0  # visual-only model fields: the physics is unchanged
    renderer.model.mat_reflectance[:] = 0


def write_webm(path: Path, frames: np.ndarray, fps: float, size: int) -> None:
    """Encode ``frames`` as VP8 WebM ``size`` pixels wide, written under a temporary name and then
    renamed, so a half-written video is never served or kept."""
    import imageio_ffmpeg

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.webm")
    h, w = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(
        str(tmp),
        (w, h),
        fps=fps,
        codec="libvpx",
        quality=None,
        bitrate="600k",
        macro_block_size=1,
        output_params=["-vf", f"scale={size}:-2", "-deadline", "good", "-cpu-used", "4"],
    )
    try:
        try:
            writer.send(None)
            for frame in frames:
                writer.send(np.ascontiguousarray(frame))
        finally:
            writer.close()  # waits for ffmpeg to finish the file
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class VideoCache:
    """Rollout videos of one preference file, rendered by replay the first time they are asked
    for and kept in ``<stem>.videos/``. One video renders at a time (an offscreen GL context is
    bound to the thread that made it, and two renders would only share the same cores)."""

    def __init__(self, path: Path, prefs: Prefs, size: int, every: int) -> None:
        self.prefs, self.size, self.every = prefs, size, every
        self.folder = Path(path).with_suffix(".videos")
        meta = prefs.meta
        self.env_cfg = EnvConfig(
            task=str(meta["task"]),
            envs=1,
            reward=str(meta.get("reward") or "") or None,
            max_episode_steps=int(meta.get("max_episode_steps") or 0) or None,
        )
        self.fps: float | None = None
        self._lock = threading.Lock()
        self._works: tuple[str, bool] | None = None  # (back end, in a fresh process) that rendered before

    def path(self, rid: str) -> Path:
        r = self.prefs.rollouts[rid]
        key = hashlib.sha256(
            json.dumps([RENDER_VERSION, to_dict(self.env_cfg), self.size, self.every, r.reset_seed]).encode()
        )
        key.update(np.ascontiguousarray(r.actions, np.float32).tobytes())
        return self.folder / f"{rid}-{key.hexdigest()[:12]}.webm"

    def video(self, rid: str) -> Path:
        """The video file of rollout ``rid`` (``KeyError`` for an unknown id), rendered if need be."""
        path = self.path(rid)
        with self._lock:
            if not path.exists():
                r = self.prefs.rollouts[rid]
                frames, self.fps = self._render(r.reset_seed, r.actions)
                write_webm(path, frames, self.fps, self.size)
        return path

    def probe(self) -> float:
        """Render one frame of the first rollout (the task can be made and rendered, and its
        frame rate), so a problem is one error at start and not a broken page."""
        if self.fps is None:
            r = next(iter(self.prefs.rollouts.values()))
            with self._lock:
                _, self.fps = self._render(r.reset_seed, r.actions[:0])
        return self.fps

    def _render(self, reset_seed: int, actions: np.ndarray) -> tuple[np.ndarray, float]:
        chosen = os.environ.get("MUJOCO_GL")
        order = [chosen] if chosen else os.environ.get("DPFT_VIDEO_BACKENDS", ",".join(BACKENDS)).split(",")
        tries = [self._works] if self._works else [(name, i > 0) for i, name in enumerate(order)]
        errors = []
        for name, fresh in tries:
            args = (self.env_cfg, reset_seed, actions, self.size, self.every, name)
            try:
                out = _replay_in_fresh_process(*args) if fresh else _replay_here(*args)
            except RenderBackendError as e:
                errors.append(f"{name}: {e}")
                continue
            self._works = (name, fresh)
            return out
        raise LabelError(
            f"could not render the rollouts of task {self.env_cfg.task!r} ({'; '.join(errors)}); on a headless "
            "Linux machine install libosmesa6 (OSMesa) or an EGL driver, or set MUJOCO_GL (osmesa or egl) to a "
            "back end that works"
        )


def _replay_here(env_cfg: EnvConfig, reset_seed: int, actions: np.ndarray, size: int, every: int, backend: str):
    try:
        with _backend(backend):
            return replay_frames(env_cfg, reset_seed, actions, size, every)
    except Exception as e:
        if isinstance(e, gym.error.DependencyNotInstalled):  # the task has no renderer: no back end helps
            raise LabelError(
                f"task {env_cfg.task!r} cannot render videos ({type(e).__name__}: {_message(e)})"
            ) from None
        if not render_backend_failed(e):
            raise
        raise RenderBackendError(f"{type(e).__name__}: {_message(e)}") from None


def _replay_in_fresh_process(
    env_cfg: EnvConfig, reset_seed: int, actions: np.ndarray, size: int, every: int, backend: str
):
    """The same replay in ``python -m dpft.finetune.dpo.label``, for a second GL back end
    (PyOpenGL fixes its platform at its first import in a process)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        job = {"env": to_dict(env_cfg), "reset_seed": int(reset_seed), "size": size, "every": every}
        (Path(tmp) / "job.json").write_text(json.dumps(job))
        np.save(Path(tmp) / "actions.npy", np.asarray(actions, np.float32))
        env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
        res = subprocess.run(
            [sys.executable, "-m", "dpft.finetune.dpo.label", tmp, backend], env=env, capture_output=True, text=True
        )
        if res.returncode != 0:
            lines = res.stderr.strip().splitlines()
            raise RenderBackendError(lines[-1] if lines else f"exit {res.returncode}")
        fps = json.loads((Path(tmp) / "fps.json").read_text())
        return np.load(Path(tmp) / "frames.npy"), float(fps)


def _worker(folder: str, backend: str) -> int:
    """``python -m dpft.finetune.dpo.label FOLDER BACKEND``: replay FOLDER/job.json with
    FOLDER/actions.npy and write FOLDER/frames.npy and FOLDER/fps.json."""
    job = json.loads((Path(folder) / "job.json").read_text())
    actions = np.load(Path(folder) / "actions.npy")
    env_cfg = from_dict(EnvConfig, job["env"])
    try:
        frames, fps = _replay_here(env_cfg, job["reset_seed"], actions, job["size"], job["every"], backend)
    except (RenderBackendError, DpftError) as e:
        print(e, file=sys.stderr)
        return 3
    np.save(Path(folder) / "frames.npy", frames)
    (Path(folder) / "fps.json").write_text(json.dumps(fps))
    return 0


# ----- the pairs and a person's answers ---------------------------------------------------
def next_pair(pairs: list[Pair], answers: dict[str, str]) -> Pair | None:
    """The first pair without an answer (file order); once every pair has one, the skipped pair
    skipped longest ago (``answers`` is in the order the pairs were last answered); else None."""
    by_id = {p.id: p for p in pairs}
    return next((p for p in pairs if p.id not in answers), None) or next(
        (by_id[pid] for pid, a in answers.items() if a == "skip"), None
    )


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that a crash left without its newline (``read_labels`` ignores it), so the
    next answer starts a line of its own instead of running into it."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())


class LabelSession:
    """One preference file being labelled: its pairs, the answers so far and the video cache.
    Safe to call from the server's request threads."""

    def __init__(self, path: Path, size: int = 160, every: int = 2, labeller: str = "", instructions: str = "") -> None:
        self.path = Path(path)
        self.labeller, self.instructions = labeller, instructions
        self.labels = labels_path(self.path)
        self.prefs = read_prefs(self.path, labels=False)
        if not self.prefs.pairs:
            raise LabelError(f"{self.path} holds no pairs to label")
        self.answers: dict[str, str] = {}
        if self.labels.exists():
            _drop_torn_tail(self.labels)
            self.answers = read_labels(self.labels)
        apply_labels(self.prefs, self.answers, self.labels)  # a labels file for another preference file fails here
        self.by_id = {p.id: p for p in self.prefs.pairs}
        self.videos = VideoCache(self.path, self.prefs, size, every)
        self._lock = threading.Lock()

    def answer(
        self, pair_id: str, answer: str, seconds: float | None = None, replays: int | None = None, reason: str = ""
    ) -> dict[str, Any]:
        """Record an answer given on the page's sides (stored in the file's order, on disk, then
        in memory), with when, by whom, the seconds the pair was on screen, how often it was
        replayed and a reason (for "can't tell"); return the state with the next pair."""
        if pair_id not in self.by_id:
            raise KeyError(pair_id)
        answer = on_screen(pair_id, answer)  # the same swap both ways
        meta = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "labeller": self.labeller}
        meta |= {"seconds": seconds, "replays": replays, "reason": reason[:500] or None}
        meta = {k: v for k, v in meta.items() if v not in (None, "")}
        with self._lock:
            append_label(self.labels, pair_id, answer, meta)  # checks the answer
            self.answers.pop(pair_id, None)  # keep the dict in the order of the last answers
            self.answers[pair_id] = answer
        return self.state()

    def state(self, pair_id: str | None = None) -> dict[str, Any]:
        """Progress, and pair ``pair_id`` (``KeyError`` if unknown) or else the next one to label."""
        with self._lock:
            answers = dict(self.answers)
        pair = self.by_id[pair_id] if pair_id else next_pair(self.prefs.pairs, answers)
        after = next_pair(self.prefs.pairs, {**answers, pair.id: "left"}) if pair else None
        skipped = sum(a == "skip" for a in answers.values())
        counts = {a: sum(x == a for x in answers.values()) for a in ("left", "right", "tie", "cant_tell")}
        return {
            "file": str(self.path),
            "labels": str(self.labels),
            "task": self.prefs.meta.get("task"),
            "total": len(self.prefs.pairs),
            "labelled": len(answers) - skipped,
            "skipped": skipped,
            "counts": counts,
            "labeller": self.labeller,
            "instructions": self.instructions,
            "next_command": f"dpft finetune dpo --base {self.prefs.meta.get('policy', 'BASE')} --prefs {self.path}",
            "pair": self._pair(pair, answers) if pair else None,
            "prefetch": [f"/video/{rid}.webm" for rid in (after.chosen, after.rejected)] if after else [],
        }

    def _pair(self, pair: Pair, answers: dict[str, str]) -> dict[str, Any]:
        start = 0.0
        if pair.kind == "chunk":  # both members share the steps before the branch: start just before it
            steps = self.prefs.rollouts[pair.chosen].start_decision * int(self.prefs.meta["action_horizon"])
            start = max(0.0, steps / self.videos.every / (self.videos.fps or self.videos.probe()) - 1.0)
        left, right = (pair.rejected, pair.chosen) if shows_swapped(pair.id) else (pair.chosen, pair.rejected)
        given = answers.get(pair.id)
        return {
            "id": pair.id,
            "kind": pair.kind,
            "number": self.prefs.pairs.index(pair) + 1,
            "answer": on_screen(pair.id, given) if given else None,
            "start": round(start, 3),
            "fps": round(self.videos.fps or self.videos.probe(), 3),
            "left": {"rollout": left, "video": f"/video/{left}.webm"},
            "right": {"rollout": right, "video": f"/video/{right}.webm"},
        }


def shows_swapped(pair_id: str) -> bool:
    """Whether the page shows the pair's stored ``rejected`` member on the left: half the pairs,
    fixed per id (a reload shows the same sides)."""
    return hashlib.sha256(pair_id.encode()).digest()[0] & 1 == 1


def on_screen(pair_id: str, answer: str) -> str:
    """Translate an answer between the page's sides and the file's order (its own inverse)."""
    return {"left": "right", "right": "left"}.get(answer, answer) if shows_swapped(pair_id) else answer


# ----- the server --------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    session: LabelSession  # set on the subclass that make_server creates
    page: bytes

    def do_GET(self) -> None:
        if not self._host_ok():
            return
        url = urlsplit(self.path)
        if url.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.page, "text/html; charset=utf-8")
        elif url.path == "/api/state":
            pair = parse_qs(url.query).get("pair", [None])[0]
            try:
                self._json(HTTPStatus.OK, self.session.state(pair))
            except KeyError:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no pair {pair!r}"})
        elif m := re.fullmatch(r"/video/([^/]+)\.webm", url.path):
            self._video(m[1])
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")

    def do_POST(self) -> None:
        if not self._host_ok():
            return
        if urlsplit(self.path).path != "/api/answer":
            return self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
        if self.headers.get_content_type() != "application/json":  # a cross-site form cannot send JSON
            return self._json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "send JSON"})
        try:
            body = json.loads(self.rfile.read(min(int(self.headers.get("Content-Length", 0)), 65536)))
            pair, answer = str(body["pair"]), str(body["answer"])
            seconds = None if body.get("seconds") is None else round(float(body["seconds"]), 1)
            replays = None if body.get("replays") is None else int(body["replays"])
            reason = str(body.get("reason") or "")
        except (ValueError, TypeError, KeyError):
            answers = '"left"|"right"|"tie"|"cant_tell"|"skip"'
            return self._json(HTTPStatus.BAD_REQUEST, {"error": f'send {{"pair": ID, "answer": {answers}}}'})
        try:
            self._json(HTTPStatus.OK, self.session.answer(pair, answer, seconds, replays, reason))
        except KeyError:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no pair {pair!r}"})
        except DpftError as e:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})

    def _host_ok(self) -> bool:
        """Only requests addressed to this server by name: a page elsewhere that points a host
        name of its own at 127.0.0.1 (DNS rebinding) is turned away."""
        port = self.server.server_address[1]
        if self.headers.get("Host") in (f"127.0.0.1:{port}", f"localhost:{port}"):
            return True
        self._send(HTTPStatus.FORBIDDEN, b"use http://127.0.0.1:PORT/", "text/plain")
        return False

    def _video(self, rid: str) -> None:
        if rid not in self.session.prefs.rollouts:
            return self._send(HTTPStatus.NOT_FOUND, b"no such rollout", "text/plain")
        try:
            data = self.session.videos.video(rid).read_bytes()
        except DpftError as e:
            print(f"error: {e}", file=sys.stderr)
            return self._send(HTTPStatus.INTERNAL_SERVER_ERROR, str(e).encode(), "text/plain; charset=utf-8")
        # media elements ask for byte ranges (to seek); answer one range, as any static server does
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if not m or not (m[1] or m[2]):
            return self._send(HTTPStatus.OK, data, "video/webm")
        n = len(data)
        first, last = (int(m[1]), int(m[2] or n - 1)) if m[1] else (max(0, n - int(m[2])), n - 1)
        last = min(last, n - 1)
        if first > last:
            return self._send(
                HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, b"", "video/webm", {"Content-Range": f"bytes */{n}"}
            )
        self._send(
            HTTPStatus.PARTIAL_CONTENT,
            data[first : last + 1],
            "video/webm",
            {"Content-Range": f"bytes {first}-{last}/{n}"},
        )

    def _json(self, status: HTTPStatus, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store" if not ctype.startswith("video/") else "private, max-age=3600")
            if ctype.startswith("video/"):
                self.send_header("Accept-Ranges", "bytes")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the page moved on (a media element cancels often)
            pass

    def log_message(self, format: str, *args: Any) -> None:  # one line per request would drown the URL
        pass


def make_server(session: LabelSession, port: int = 0) -> ThreadingHTTPServer:
    """The page's server on 127.0.0.1:``port`` (0: any free port), not yet serving."""
    handler = type("Handler", (_Handler,), {"session": session, "page": _page()})
    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as e:
        raise LabelError(
            f"cannot serve on 127.0.0.1:{port} ({e.strerror or e}); is another `dpft prefs label` running? "
            "pass --port N, or --port 0 for any free port"
        ) from None
    server.daemon_threads = True
    return server


def _page() -> bytes:
    return (files("dpft.finetune.dpo") / "label_page.html").read_bytes()


def url_of(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/"


def prefs_label(cfg: PrefsLabelConfig) -> LabelSession:
    instructions = cfg.instructions.read_text() if cfg.instructions else ""
    session = LabelSession(cfg.file, cfg.size, cfg.every, cfg.labeller, instructions)
    server = make_server(session, cfg.port)
    try:
        session.videos.probe()
        s = session.state()
        print(f"{cfg.file}: {s['labelled']} / {s['total']} pairs labelled; answers go to {session.labels}")
        print(f"label them at {url_of(server)}  (Ctrl-C to stop; every answer is saved at once)", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        s = session.state()
        print(f"\nstopped: {s['labelled']} / {s['total']} pairs labelled in {session.labels}", file=sys.stderr)
    finally:
        server.server_close()
    return session


if __name__ == "__main__":
    sys.exit(_worker(*sys.argv[1:]))
