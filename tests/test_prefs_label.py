"""`dpft prefs label`: the labelling page, driven in a real headless Chromium over the DevTools
protocol, and the answer / resume logic behind it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from dpft.base_policies.infra.errors import DpftError
from dpft.envs.config import EnvConfig
from dpft.finetune.dpo.label import LabelError, LabelSession, make_server, next_pair, shows_swapped, url_of
from dpft.finetune.dpo.prefs import (
    Pair,
    Prefs,
    PrefsError,
    Rollout,
    append_label,
    labels_path,
    read_labels,
    read_prefs,
    write_prefs,
)

TASK = "gym:InvertedPendulum-v5"  # the fastest MuJoCo task to render; 25 fps, 1 s = 25 steps
K = 4  # action_horizon of the made-up policy: a chunk pair branches after start_decision * K steps
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _rollout(env, seed: int, rng: np.random.Generator, steps: int, prefix=(), start_decision: int = 0) -> Rollout:
    """A real rollout (replayable from its reset seed) of a noisy balancing controller, after
    ``prefix`` actions."""
    obs, _ = env.reset(seed=seed)
    actions, ret = [], 0.0
    for i in range(steps):
        a = prefix[i] if i < len(prefix) else np.clip([5 * obs[1] + obs[3] + 0.3 * rng.normal()], -3, 3)
        a = np.asarray(a, np.float32)
        obs, r, terminated, truncated, _ = env.step(a)
        actions.append(a)
        ret += float(r)
        if terminated or truncated:
            break
    n = -(-len(actions) // K)
    return Rollout(
        obs=np.zeros((n, 1, 4), np.float32),
        chunks=np.zeros((n, K, 1), np.float32),
        actions=np.stack(actions),
        episode_return=ret,
        success=False,
        length=len(actions),
        reset_seed=seed,
        group=seed,
        start_decision=start_decision,
    )


def _pair(n: int, kind: str, chosen: str, rejected: str, seed: int) -> Pair:
    return Pair(f"p{n:06d}", kind, chosen, rejected, None, 0.0, None, seed, "test", 0)


@pytest.fixture(scope="module")
def prefs_file(tmp_path_factory) -> Path:
    """Four unlabelled pairs of rollouts of 80 steps or fewer: three whole trajectories, and a
    chunk pair (the second) whose members share their first ten decisions."""
    env = EnvConfig(task=TASK).make_env()
    rng = np.random.default_rng(0)
    rollouts, pairs = {}, []
    for n, seed in enumerate([0, 1, 2, 3]):
        a, b = f"r{2 * n:06d}", f"r{2 * n + 1:06d}"
        if n == 1:
            rollouts[a] = _rollout(env, seed, rng, 80, start_decision=10)
            rollouts[b] = _rollout(env, seed, rng, 80, prefix=rollouts[a].actions[: 10 * K], start_decision=10)
        else:
            rollouts[a], rollouts[b] = _rollout(env, seed, rng, 80), _rollout(env, seed, rng, 80)
        pairs.append(_pair(n, "chunk" if n == 1 else "trajectory", a, b, seed))
    env.close()
    meta = {"task": TASK, "obs_dim": 4, "action_dim": 1, "obs_horizon": 1, "pred_horizon": K, "action_horizon": K}
    path = tmp_path_factory.mktemp("prefs") / "prefs.hdf5"
    write_prefs(path, Prefs({**meta, "sampler": "ddim", "policy": "test"}, rollouts, pairs))
    return path


@pytest.fixture
def prefs(prefs_file: Path, tmp_path: Path) -> Path:
    """A copy of the preference file of its own (labels and videos are written beside it)."""
    for p in prefs_file.parent.glob("prefs.*"):
        if p.is_file():
            shutil.copy(p, tmp_path / p.name)
    return tmp_path / "prefs.hdf5"


class Server:
    """The labelling server of one preference file, in a thread, as `dpft prefs label` runs it."""

    def __init__(self, path: Path, port: int = 0) -> None:
        self.session = LabelSession(path)
        self.httpd = make_server(self.session, port)
        self.url = url_of(self.httpd)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


class Browser:
    """Debian's headless Chromium, driven over the DevTools protocol (a websocket to its page)."""

    def __init__(self, profile: Path) -> None:
        import websocket

        profile.mkdir(parents=True, exist_ok=True)
        (profile / "DevToolsActivePort").unlink(missing_ok=True)
        argv = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        argv += ["--no-first-run", "--no-default-browser-check", "--mute-audio", "--window-size=1280,900"]
        argv += ["--autoplay-policy=no-user-gesture-required"]
        argv += [f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            assert self.proc.poll() is None, f"chromium exited with status {self.proc.returncode}"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port within 30 s"
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self._id = 0

    def send(self, method: str, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:  # events of other domains may come first
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                assert "error" not in msg, msg
                return msg.get("result", {})

    def eval(self, expression: str):
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in r, r["exceptionDetails"]
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while not (value := self.eval(expression)):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.1)
        return value

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && document.body.dataset.pair !== undefined")

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element."""
        find = f"document.querySelector('{selector}')"
        self.eval(f"{find}.scrollIntoView({{block: 'center'}})")
        box = self.eval(f"(r => [r.x + r.width / 2, r.y + r.height / 2])({find}.getBoundingClientRect())")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def press(self, key: str, code: str, key_code: int) -> None:
        """A real key press (``text`` only for printable keys, as a keyboard sends it)."""
        down = {"text": key} if len(key) == 1 else {}
        self.send(
            "Input.dispatchKeyEvent",
            type="keyDown" if down else "rawKeyDown",
            key=key,
            code=code,
            windowsVirtualKeyCode=key_code,
            **down,
        )
        self.send("Input.dispatchKeyEvent", type="keyUp", key=key, code=code, windowsVirtualKeyCode=key_code)

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


VIDEOS_PLAY = """(() => {
  const vs = [...document.querySelectorAll('video')];
  return vs.length === 2 && vs.every(v => !v.error && v.readyState >= 2 && v.videoWidth > 0 && v.played.length > 0
                                         && v.currentSrc.endsWith('.webm'));
})()"""


def _shows(browser: Browser, pair: str, progress: str) -> None:
    browser.wait_for(f"document.body.dataset.pair === '{pair}'")
    assert browser.eval("document.getElementById('progress').textContent") == progress
    browser.wait_for(VIDEOS_PLAY, timeout=60)  # rendered on demand, served, decoded and playing


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_a_person_labels_pairs_in_a_headless_browser_and_resumes(prefs: Path, tmp_path: Path):
    server = Server(prefs)
    browser = Browser(tmp_path / "profile1")
    try:
        browser.open(server.url)
        _shows(browser, "p000000", "0 / 4 labelled")
        left, right = browser.eval("[...document.querySelectorAll('video')].map(v => v.currentSrc)")
        assert shows_swapped("p000000") and shows_swapped("p000001") and not shows_swapped("p000003")
        assert "/video/r000001.webm" in left and "/video/r000000.webm" in right  # swapped: stored rejected on the left
        # one set of playback controls for both videos: pause, frame step, speed, one scrub bar
        browser.press("p", "KeyP", 80)
        browser.wait_for("[...document.querySelectorAll('video')].every(v => v.paused)")
        t0 = browser.eval("document.getElementById('video-left').currentTime")
        browser.press(".", "Period", 190)
        browser.wait_for(f"[...document.querySelectorAll('video')].every(v => v.currentTime > {t0} + 0.01)")
        browser.press("+", "Equal", 187)
        browser.wait_for("[...document.querySelectorAll('video')].every(v => v.playbackRate === 2)")
        browser.eval("(s => { s.value = 0.5; s.dispatchEvent(new Event('input')); })(document.getElementById('scrub'))")
        browser.wait_for("[...document.querySelectorAll('video')].every(v => Math.abs(v.currentTime - 0.5) < 0.05)")
        browser.press("p", "KeyP", 80)
        browser.wait_for("[...document.querySelectorAll('video')].every(v => !v.paused)")
        browser.click("#btn-left")  # the rollout stored as rejected wins
        _shows(browser, "p000001", "1 / 4 labelled")
        # a chunk pair: playback starts 1 s before the branch (10 decisions of 4 steps, at 25 steps a second)
        assert browser.eval("state.pair.start") == pytest.approx(10 * K / 25 - 1.0)
        assert browser.eval("[...document.querySelectorAll('video')].every(v => v.currentTime >= state.pair.start)")
        browser.press("ArrowRight", "ArrowRight", 39)
        _shows(browser, "p000002", "2 / 4 labelled")
    finally:
        browser.close()  # closing the browser loses nothing: each answer was on disk before the page moved on
        server.close()
    lines = [json.loads(line) for line in labels_path(prefs).read_text().splitlines()]
    answers = [{k: line[k] for k in ("pair", "answer")} for line in lines]
    assert answers == [{"pair": "p000000", "answer": "right"}, {"pair": "p000001", "answer": "left"}]  # stored order
    assert all({"time", "seconds", "replays"} <= set(line) for line in lines) and lines[0]["seconds"] > 0
    cached = {p.name.split("-")[0] for p in (tmp_path / "prefs.videos").glob("r*.webm")}
    assert {f"r{i:06d}" for i in range(6)} <= cached  # the videos of the pairs shown (and perhaps the next)

    server = Server(prefs)  # a restarted server and a new browser resume at the first unlabelled pair
    browser = Browser(tmp_path / "profile2")
    try:
        browser.open(server.url)
        _shows(browser, "p000002", "2 / 4 labelled")
        browser.press("s", "KeyS", 83)  # skip: asked again once every other pair has an answer
        _shows(browser, "p000003", "2 / 4 labelled, 1 skipped")
        browser.press("t", "KeyT", 84)
        _shows(browser, "p000002", "3 / 4 labelled, 1 skipped")
        browser.press("b", "KeyB", 66)  # back: the pair answered last, with its answer
        _shows(browser, "p000003", "3 / 4 labelled, 1 skipped")
        assert browser.eval("document.getElementById('info').textContent").endswith("answered before: tie")
        browser.press("t", "KeyT", 84)  # the same answer again; the skipped pair comes back
        _shows(browser, "p000002", "3 / 4 labelled, 1 skipped")
        browser.click("#reason")  # "can't tell", with a reason typed into its field and Enter
        for ch in "blur":
            browser.press(ch, f"Key{ch.upper()}", ord(ch.upper()))
        browser.press("Enter", "Enter", 13)
        browser.wait_for("!document.getElementById('done').hidden")
        assert "1 can't tell" in browser.eval("document.getElementById('done-counts').textContent")
        assert "dpft finetune dpo" in browser.eval("document.getElementById('next-command').textContent")
        browser.open(server.url + "?pair=p000001")  # any earlier answer reopens after a reload, with its answer
        _shows(browser, "p000001", "4 / 4 labelled")
        assert browser.eval("document.getElementById('info').textContent").endswith("answered before: right")
    finally:
        browser.close()
        server.close()
    labelled = {p.id: (p.label, p.source) for p in read_prefs(prefs).pairs}
    assert labelled == {
        "p000000": ("rejected", "person"),
        "p000001": ("chosen", "person"),
        "p000002": ("unclear", "person"),
        "p000003": ("tie", "person"),
    }
    last = json.loads(labels_path(prefs).read_text().splitlines()[-1])
    assert last["answer"] == "cant_tell" and last["reason"] == "blur"


# ----- without a browser -------------------------------------------------------------------
def test_unanswered_pairs_first_then_skipped_ones_oldest_skip_first():
    pairs = [_pair(n, "trajectory", "a", "b", 0) for n in range(4)]
    ids = [p.id for p in pairs]
    assert next_pair(pairs, {}).id == ids[0]
    assert next_pair(pairs, {ids[0]: "skip", ids[1]: "left"}).id == ids[2]
    assert next_pair(pairs, {ids[2]: "skip", ids[0]: "skip", ids[1]: "tie", ids[3]: "right"}).id == ids[2]
    assert next_pair(pairs, dict.fromkeys(ids, "left")) is None


def test_answers_are_on_disk_at_once_and_a_new_session_resumes(prefs: Path):
    s = LabelSession(prefs)
    assert s.state()["pair"]["id"] == "p000000"
    assert s.answer("p000000", "skip")["pair"]["id"] == "p000001"
    state = s.answer("p000001", "tie")
    assert read_labels(labels_path(prefs)) == {"p000000": "skip", "p000001": "tie"}
    with open(labels_path(prefs), "a") as f:
        f.write('{"pair": "p000002", "ans')  # a line a crash cut short: ignored, and cut so the next answer is a line
    resumed = LabelSession(prefs).state()
    assert resumed["pair"]["id"] == state["pair"]["id"] == "p000002"
    assert (resumed["labelled"], resumed["skipped"], resumed["total"]) == (1, 1, 4)
    assert s.state("p000001")["pair"]["answer"] == "tie"  # "back" shows an answered pair with its answer
    with pytest.raises(PrefsError, match="answer 'up'"):
        s.answer("p000002", "up")
    with pytest.raises(KeyError):
        s.answer("p999999", "left")
    LabelSession(prefs).answer("p000002", "left")  # the page shows p000002 swapped: its left is the stored rejected
    assert read_labels(labels_path(prefs)) == {"p000000": "skip", "p000001": "tie", "p000002": "right"}
    assert LabelSession(prefs).state("p000002")["pair"]["answer"] == "left"  # shown back on the page's sides


def test_each_label_says_who_when_how_long_and_why_and_cant_tell_never_trains(prefs: Path, capsys):
    s = LabelSession(prefs, labeller="ana", instructions="The block must end on the goal.")
    state = s.state()
    assert state["labeller"] == "ana" and state["instructions"].startswith("The block")
    s.answer("p000000", "left", seconds=7.25, replays=2)
    s.answer("p000001", "cant_tell", seconds=3.0, replays=0, reason="both leave the frame")
    first, second = (json.loads(x) for x in labels_path(prefs).read_text().splitlines())
    assert first["labeller"] == "ana" and first["seconds"] == 7.25 and first["replays"] == 2 and "time" in first
    assert second["answer"] == "cant_tell" and second["reason"] == "both leave the frame"
    pairs = {p.id: p for p in read_prefs(prefs).pairs}
    assert pairs["p000001"].label == "unclear" and pairs["p000001"].preferred() is None  # never a training pair
    assert LabelSession(prefs).state()["counts"]["cant_tell"] == 1


def test_two_labellers_files_compare(prefs: Path, tmp_path: Path, capsys):
    from dpft.finetune.dpo.tools import PrefsStatsConfig, prefs_stats

    a, b = tmp_path / "a.labels.jsonl", tmp_path / "b.labels.jsonl"
    for path, answers in ((a, ["left", "right", "tie", "skip"]), (b, ["left", "left", "tie", "right"])):
        for i, answer in enumerate(answers):
            append_label(path, f"p{i:06d}", answer)
    (result,) = prefs_stats(PrefsStatsConfig(agreement=(a, b)))
    assert result == {"both_answered": 3, "same_answer": 2, "agreement": 2 / 3}
    assert "the same answer on 2 (67%)" in capsys.readouterr().out


def test_a_labels_file_for_another_preference_file_is_one_clear_error(prefs: Path):
    labels_path(prefs).write_text(json.dumps({"pair": "q000007", "answer": "left"}) + "\n")
    with pytest.raises(PrefsError, match="names 1 pair.*another preference file"):
        LabelSession(prefs)


def test_a_file_whose_task_does_not_match_its_rollouts_is_one_clear_error(prefs: Path):
    import h5py

    with h5py.File(prefs, "a") as f:
        f.attrs["task"] = "gym:Hopper-v5"  # 3 actions; the rollouts have 1
    with pytest.raises(LabelError, match=r"shape \(1,\) but task 'gym:Hopper-v5' takes \(3,\)"):
        LabelSession(prefs).videos.probe()


def test_the_server_is_local_checks_its_callers_and_serves_byte_ranges(prefs: Path):
    server = Server(prefs)
    try:
        assert server.httpd.server_address[0] == "127.0.0.1"
        with pytest.raises(LabelError, match="127.0.0.1:.*in use.*--port 0"):
            make_server(server.session, server.httpd.server_address[1])

        def request(path: str, data: bytes | None = None, **headers: str):
            req = urllib.request.Request(server.url.rstrip("/") + path, data=data, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    return r.status, r.read(), r.headers
            except urllib.error.HTTPError as e:
                return e.code, e.read(), e.headers

        assert request("/api/state", Host="attacker.example:80")[0] == 403  # DNS rebinding
        assert (
            request(
                "/api/answer", b"pair=p000000&answer=left", **{"Content-Type": "application/x-www-form-urlencoded"}
            )[0]
            == 415
        )
        assert request("/video/..%2Fprefs.hdf5.webm")[0] == 404
        status, whole, _ = request("/video/r000000.webm")
        assert status == 200 and whole[:4] == b"\x1a\x45\xdf\xa3"  # EBML: a WebM file
        status, part, headers = request("/video/r000000.webm", Range="bytes=10-19")
        assert status == 206 and part == whole[10:20] and headers["Content-Range"] == f"bytes 10-19/{len(whole)}"
        assert not labels_path(prefs).exists()
    finally:
        server.close()
    # the video is the rollout replayed: its reset frame, every 2nd step and the last, 160 pixels wide
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(next((prefs.parent / "prefs.videos").glob("r000000-*.webm"))))
    meta, frames = next(reader), list(reader)
    n = read_prefs(prefs).rollouts["r000000"].length
    assert len(frames) == 1 + n // 2 + n % 2 and meta["size"] == (160, 160)


def _without_gl(backends: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY")}
    return env | {"DPFT_VIDEO_BACKENDS": backends, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_videos_fall_back_to_the_next_gl_backend_in_a_fresh_process(prefs: Path):
    """glfw cannot render here (no display); EGL then renders in a fresh process, since PyOpenGL
    picks its platform once per process."""
    code = (
        f"from dpft.finetune.dpo.label import LabelSession; print(LabelSession({str(prefs)!r}).videos.video('r000000'))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], env=_without_gl("glfw,egl"), capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip()).read_bytes()[:4] == b"\x1a\x45\xdf\xa3"


def test_a_task_that_cannot_render_is_one_line_naming_mujoco_gl(prefs: Path):
    """No GL back end works ("nope" is none): `dpft prefs label` says what to set instead of
    serving a page whose videos fail."""
    env = _without_gl("glfw,nope")
    argv = [sys.executable, "-m", "dpft.finetune", "prefs", "label", str(prefs), "--port", "0"]
    res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    error = [line for line in res.stderr.splitlines() if line.startswith("error:")]  # (glfw warns on its own too)
    assert len(error) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "glfw:" in error[0] and "nope:" in error[0] and "MUJOCO_GL" in error[0]


def test_cli_help_and_bad_settings():
    from dpft.finetune.commands import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["prefs", "label", "--help"])
    assert e.value.code == 0
    with pytest.raises(DpftError, match="--size"):
        cli.parse("prefs label", ["p.hdf5", "--size", "33"])
    with pytest.raises(DpftError, match="--instructions nowhere.txt is not a file"):
        cli.parse("prefs label", ["p.hdf5", "--instructions", "nowhere.txt"])


@pytest.fixture
def hundred_pairs(tmp_path: Path) -> Path:
    """100 unlabelled trajectory pairs of short InvertedPendulum rollouts (12 steps: quick to render)."""
    env = EnvConfig(task=TASK).make_env()
    rng = np.random.default_rng(1)
    rollouts, pairs = {}, []
    for n in range(100):
        a, b = f"r{2 * n:06d}", f"r{2 * n + 1:06d}"
        rollouts[a], rollouts[b] = _rollout(env, n, rng, 12), _rollout(env, n, rng, 12)
        pairs.append(_pair(n, "trajectory", a, b, n))
    env.close()
    meta = {"task": TASK, "obs_dim": 4, "action_dim": 1, "obs_horizon": 1, "pred_horizon": K, "action_horizon": K}
    path = tmp_path / "hundred.hdf5"
    write_prefs(path, Prefs({**meta, "sampler": "ddim", "policy": "test"}, rollouts, pairs))
    return path


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_a_scripted_labeller_answers_100_pairs_by_keyboard_and_a_dpo_round_trains_on_them(
    hundred_pairs: Path, tmp_path: Path
):
    """The page holds up for a whole labelling session: 100 pairs answered with the keyboard only
    (left, right, tie in turn), each once both videos play, then `dpft finetune dpo --prefs` trains
    on the 67 preferences and says so."""
    from conftest import tiny_policy

    from dpft.finetune.commands import cli

    server = Server(hundred_pairs)
    browser = Browser(tmp_path / "profile")
    keys = [("ArrowLeft", "ArrowLeft", 37), ("ArrowRight", "ArrowRight", 39), ("t", "KeyT", 84)]
    try:
        browser.open(server.url)
        for n in range(100):
            _shows(browser, f"p{n:06d}", f"{n} / 100 labelled")
            browser.wait_for("!document.getElementById('btn-left').disabled")  # open once both videos loaded
            browser.press(*keys[n % 3])
        browser.wait_for("!document.getElementById('done').hidden")
        assert browser.eval("document.getElementById('done-counts').textContent").startswith("67 preferences, 33 ties")
    finally:
        browser.close()
        server.close()
    assert len(read_labels(labels_path(hundred_pairs))) == 100

    base = tmp_path / "base"
    tiny_policy("diffusion", "mlp", obs_dim=4, action_dim=1, obs_horizon=1, pred_horizon=K, action_horizon=K).save(base)
    argv = ["finetune", "dpo", "--base", str(base), "--task", TASK, "--prefs", str(hundred_pairs), "--rounds", "1"]
    argv += ["--steps-per-round", "5", "--eval-episodes", "2", "--final", "last", "--out", str(tmp_path / "dpo")]
    assert cli.main([*argv, "--no-progress"]) == 0
    assert (tmp_path / "dpo" / "policy" / "config.json").exists()
    given = json.loads((tmp_path / "dpo" / "given_prefs.json").read_text())
    assert given[0]["used"] == 67 and given[0]["labelled_by_person"] == 100 and given[0]["ties"] == 33
