"""Reference point for the DSRL benchmark: plain SAC from scratch on the task, no base policy.

Same task, reward wrapper, budget and evaluation schedule as a DSRL run, so the table can
show what the base policy buys. Writes the same ``evals.jsonl`` a DSRL run does (env_steps,
success_rate, return_mean, episodes, wall_s) and checkpoints atomically so ``--resume``
continues a run cut off by the end of a session.

    python experiments/benchmarks/sac_scratch.py --task metaworld:push-v3 --seed 0 --steps 100000 \
        --reward "sparse_success(terminate=True)" --out runs/bench_dsrl/push/scratch/seed0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback

from dpft.base_policies.state_io import atomic_dir, atomic_write_text
from dpft.envs.config import EnvConfig
from dpft.envs.tasks import task_defines_success
from dpft.finetune.eval_log import append_eval, trim_evals


def evaluate_sac(model: SAC, cfg: EnvConfig, episodes: int) -> dict:
    """Deterministic (mean) actions; success = the task reported success at any step."""
    env = cfg.make_env()
    returns, successes = [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=cfg.seed + i)
        done, ret, success = False, 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, info = env.step(action)
            ret += float(reward)
            success |= bool(info.get("success", False))
            done = terminated or truncated
        returns.append(ret)
        successes.append(success)
    env.close()
    rate = float(np.mean(successes)) if task_defines_success(cfg.task) else None
    return {"success_rate": rate, "return_mean": float(np.mean(returns)), "episodes": episodes}


class EvalAndCheckpoint(BaseCallback):
    def __init__(self, args, out: Path, wall_s: float) -> None:
        super().__init__()
        self.args, self.out, self.wall_before, self.t0 = args, out, wall_s, time.perf_counter()
        self.eval_cfg = EnvConfig(task=args.task, seed=args.seed + 1_000_000, reward=args.reward)

    def wall_s(self) -> float:
        return self.wall_before + time.perf_counter() - self.t0

    def _on_step(self) -> bool:
        n = self.num_timesteps
        if n % self.args.eval_every == 0:
            row = {"env_steps": n, **evaluate_sac(self.model, self.eval_cfg, self.args.eval_episodes)}
            append_eval(self.out / "evals.jsonl", {**row, "wall_s": round(self.wall_s(), 1)})
            print(json.dumps(row), flush=True)
        if n % self.args.checkpoint_every == 0:
            save(self.model, self.out, self.wall_s())
        return True


def save(model: SAC, out: Path, wall_s: float) -> None:
    with atomic_dir(out / "checkpoint") as tmp:
        model.save(tmp / "sac.zip")
        model.save_replay_buffer(tmp / "replay.pkl")
        (tmp / "state.json").write_text(json.dumps({"wall_s": wall_s}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", required=True)
    ap.add_argument("--reward", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--warmup-steps", type=int, default=2000)
    ap.add_argument("--eval-every", type=int, default=5000)
    ap.add_argument("--eval-episodes", type=int, default=30)
    ap.add_argument("--checkpoint-every", type=int, default=10_000)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    env = EnvConfig(task=args.task, seed=args.seed, reward=args.reward).make_env()
    ckpt = args.out / "checkpoint"
    if args.resume and ckpt.exists():
        model = SAC.load(ckpt / "sac.zip", env=env)
        model.load_replay_buffer(ckpt / "replay.pkl")
        wall_s = json.loads((ckpt / "state.json").read_text())["wall_s"]
        trim_evals(args.out / "evals.jsonl", model.num_timesteps)
    else:
        if (args.out / "evals.jsonl").exists():
            raise SystemExit(f"error: {args.out} already holds a run; pass --resume")
        args.out.mkdir(parents=True, exist_ok=True)
        model = SAC("MlpPolicy", env, learning_starts=args.warmup_steps, seed=args.seed, verbose=0)
        wall_s = 0.0
    atomic_write_text(args.out / "config.json", json.dumps({k: str(v) for k, v in vars(args).items()}, indent=2))
    cb = EvalAndCheckpoint(args, args.out, wall_s)
    model.learn(args.steps - model.num_timesteps, callback=cb, reset_num_timesteps=not args.resume)
    save(model, args.out, cb.wall_s())
    atomic_write_text(
        args.out / "final_eval.json", json.dumps({"env_steps": model.num_timesteps, "train_wall_s": cb.wall_s()})
    )


if __name__ == "__main__":
    main()
