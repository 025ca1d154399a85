"""What fine-tuning costs against the simulator it runs on, measured side by side in one run.

    python experiments/benchmarks/bench_speed.py --out experiments/results/speed_runs.json \\
        [--env-steps 100000] [--runs na na-utd0.5 sac td3 find dppo] [--threads 1] [--device cpu]

Everything on metaworld:push-v3 (DSRL: the shipped mixed-data push base; residual-TD3: its
benchmark row's narrow push base), one torch thread, the
machine otherwise idle (a second job on a 2-core machine slows both by far more than it shows):

1. the raw simulator (the gymnasium env of ``dpft.envs.tasks.make``) with random actions drawn
   beforehand, and the rollout harness (the chunked vector env and its wrappers) with random
   chunks, for the same env steps: the harness's share of a rollout;
2. one gradient step of DSRL-NA and of plain SB3 SAC of the same width (256 x 2), batch (128),
   observation (78) and action (32) sizes, on a filled replay buffer: what DSRL-NA adds per update;
3. whole ``dpft finetune`` runs (DSRL-NA, DSRL-NA at UTD 0.5, DSRL-SAC, residual-TD3, FIND, DPPO) of
   ``--env-steps`` env steps with the benchmark's settings but no periodic evaluation (one final
   evaluation of 30 episodes): wall-clock, env steps/s, and the ratio to the raw simulator's time
   for the same env steps. Start-up and the final evaluation are inside the wall-clock.

Results are ratios to the raw simulator measured in the same run; the JSON keeps the absolute
numbers too. ``speed_report.py``-style formatting is left to ``--markdown``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
TASK = "metaworld:push-v3"
BASE = "shipped:metaworld-push-v3-mh"
BENCH = "experiments/configs/bench"
RUNS = {  # the benchmark rows' settings (their config files), evaluations overridden below
    "na": ["finetune", "dsrl", "--config", f"{BENCH}/dsrl_push-mh.yaml"],
    "na-utd0.5": ["finetune", "dsrl", "--config", f"{BENCH}/dsrl_push-mh.yaml", "--utd", "0.5"],
    "sac": ["finetune", "dsrl", "--config", f"{BENCH}/dsrl_push-mh.yaml", "--variant", "sac"],
    "td3": ["finetune", "residual", "--config", f"{BENCH}/residual_push.yaml", "--algo", "td3"],
    # on-policy: their own defaults, the row's base and schedule (the DSRL config names DSRL-only settings)
    "find": ["finetune", "find", "--config", f"{BENCH}/shared/rows.yaml", "--base", "shipped:metaworld-push-v3-mh"],
    "dppo": ["finetune", "dppo", "--config", f"{BENCH}/shared/rows.yaml", "--base", "shipped:metaworld-push-v3-mh"],
}


def raw_simulator(env_steps: int) -> float:
    """Seconds for ``env_steps`` random-action steps of the bare task env."""
    from dpft.envs.tasks import make

    env = make(TASK)
    env.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, (env_steps, *env.action_space.shape)).astype(np.float32)
    t = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    return time.perf_counter() - t


def harness(env_steps: int, envs: int) -> float:
    """Seconds for ``env_steps`` env steps of the chunked vector env with random chunks."""
    from dpft.envs.config import EnvConfig

    venv = EnvConfig(task=TASK, envs=envs).make_vector(2, 8, 4)
    venv.reset(seed=0)
    rng = np.random.default_rng(0)
    chunks = rng.uniform(-1, 1, (env_steps // (4 * envs) + 1, envs, 8, 4)).astype(np.float32)
    done, t = 0, time.perf_counter()
    for chunk in chunks:
        _, _, _, _, infos = venv.step(chunk)
        done += executed(infos)
        if done >= env_steps:
            break
    elapsed = time.perf_counter() - t
    venv.close()
    return elapsed * env_steps / done


def executed(infos: dict) -> int:
    """Env steps of one vector step: running envs report them in ``steps``; an env whose episode
    ended (and was reset in the same step) in ``final_info``."""
    n = int(np.sum(infos["steps"][infos["_steps"]])) if "steps" in infos else 0
    final = infos.get("final_info")
    if final is not None and "steps" in final:
        n += int(np.sum(final["steps"][final["_steps"]]))
    return n


def gradient_steps(steps: int, device: str) -> dict[str, float]:
    """Milliseconds per gradient step: DSRL-NA (the benchmark's settings) and plain SB3 SAC of the
    same width, batch and sizes, each on a buffer of 500 transitions collected on push."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.vec_env import DummyVecEnv

    from dpft.base_policies.infra.device import resolve_device
    from dpft.finetune.common.run import make_vec_env, resolve_base
    from dpft.finetune.dsrl.train import DSRL, DSRLConfig

    cfg = DSRLConfig(
        base=BASE, batch_size=128, init_alpha=0.01, warmup_steps=2000, steps=100_000, layer_norm=False, utd=1
    )
    method = DSRL()
    cfg, base = resolve_base(cfg, resolve_device(device))
    venv = method.wrap_vec_env(cfg, base, make_vec_env(cfg, lambda: method.make_env(cfg, base)))
    plain = DummyVecEnv([lambda: method.make_env(cfg, base)])  # the same spaces, made before any tracing
    na = method.new_model(cfg, base, venv)
    na.set_logger(Logger(folder=None, output_formats=[]))
    na.learn(total_timesteps=500, progress_bar=False)  # warm-up transitions only: no update yet
    na._n_updates = 10**9  # past every warm-up: the full update (actor and temperature too)
    size = na.replay_buffer.buffer_size
    sac = SAC("MlpPolicy", plain, batch_size=128, buffer_size=size, seed=0, device=base.device)
    for field in ("observations", "actions", "next_observations", "rewards", "dones", "timeouts", "pos", "full"):
        setattr(sac.replay_buffer, field, getattr(na.replay_buffer, field))  # the same transitions
    sac.set_logger(Logger(folder=None, output_formats=[]))
    out = {}
    for name, model in (("dsrl_na_ms", na), ("sb3_sac_ms", sac)):
        model.train(10, 128)  # first calls trace the fast sampler and allocate
        t = time.perf_counter()
        model.train(steps, 128)
        out[name] = (time.perf_counter() - t) / steps * 1e3
    return out


def whole_run(name: str, env_steps: int, device: str, workdir: Path) -> dict[str, float]:
    out = workdir / name
    cmd = [sys.executable, "-m", "dpft.finetune", *RUNS[name], "--steps", str(env_steps)]
    cmd += ["--eval-every", str(10 * env_steps), "--checkpoint-every", str(env_steps), "--eval-episodes", "30"]
    cmd += ["--out", str(out), "--no-progress", "--device", device, "--seed", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{name} failed:\n{res.stderr[-2000:]}")
    wall = time.perf_counter() - t
    final = json.loads((out / "final_eval.json").read_text())
    return {"wall_s": wall, "train_wall_s": final["train_wall_s"], "env_steps": final["env_steps"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--env-steps", type=int, default=100_000)
    ap.add_argument("--sim-steps", type=int, default=20_000, help="env steps of the raw and harness timings")
    ap.add_argument("--grad-steps", type=int, default=200)
    ap.add_argument("--runs", nargs="*", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    result: dict = {"threads": args.threads, "device": args.device, "cpu": _cpu_name()}
    raw = raw_simulator(args.sim_steps)
    result["raw_sim_steps_per_s"] = args.sim_steps / raw
    result["harness_1env_vs_raw"] = raw / harness(args.sim_steps, 1)
    result["harness_8env_vs_raw"] = raw / harness(args.sim_steps, 8)
    result.update(gradient_steps(args.grad_steps, args.device))
    result["dsrl_na_step_vs_sac_step"] = result["dsrl_na_ms"] / result["sb3_sac_ms"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.runs:
            run = whole_run(name, args.env_steps, args.device, Path(tmp))
            run["vs_raw_sim"] = run["wall_s"] / (run["env_steps"] / result["raw_sim_steps_per_s"])
            result[f"run_{name}"] = run
            args.out.write_text(json.dumps(result, indent=2))  # partial results survive a cut session
            print(name, run, flush=True)
    print(json.dumps(result, indent=2))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
