"""Train a stable-baselines3 SAC expert for a locomotion task and export its actor.

    # the short run behind the first shipped experts (weights/<Env-id>.*)
    python experiments/train_locomotion_expert.py --task gym:Hopper-v5 --steps 60000 --seed 0
    # D4RL-style levels: a long resumable run, snapshots every --eval-every steps, then
    # weights/<Env-id>-expert.* (best snapshot) and weights/<Env-id>-medium.* (the snapshot whose
    # return is nearest --medium-fraction of the expert's)
    python experiments/train_locomotion_expert.py --task gym:Hopper-v5 --steps 300000 --levels \
        --work runs/experts/Hopper-v5

The deterministic actor (mean action) is written as safetensors plus a JSON file with its
architecture and evaluation return, so the expert loads without SB3's pickled zip. With
``--work`` the run keeps SB3's model and replay buffer there at every snapshot; running the same
command again after a kill resumes from the last one (about an hour of CPU for 300k steps here,
so it is meant to run in the background).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from dpft.base_policies.sb3_actor import SquashedMeanActor
from dpft.envs.tasks import make

OUT = Path(__file__).resolve().parent.parent / "envs" / "experts" / "weights"


def actor_state(model: SAC) -> dict[str, torch.Tensor]:
    state = SquashedMeanActor.from_sb3(model.policy.actor).state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


class Snapshots(BaseCallback):
    """Every ``every`` steps: evaluate, keep the actor as ``snapshots/<step>.safetensors``, log
    the return to ``evals.jsonl`` and save model + replay buffer for a resume (model last, so a
    kill between the two leaves the previous consistent pair)."""

    def __init__(self, work: Path, task: str, every: int, episodes: int) -> None:
        super().__init__()
        self.work, self.task, self.every, self.episodes = work, task, every, episodes

    def _on_step(self) -> bool:
        step = self.model.num_timesteps
        if step % self.every:
            return True
        mean, std = evaluate_policy(
            self.model, Monitor(make(self.task)), n_eval_episodes=self.episodes, deterministic=True
        )
        (self.work / "snapshots").mkdir(parents=True, exist_ok=True)
        save_file(actor_state(self.model), str(self.work / "snapshots" / f"{step}.safetensors"))
        with open(self.work / "evals.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "return_mean": float(mean), "return_std": float(std)}) + "\n")
        print(f"step {step}: return {mean:.1f} ± {std:.1f}", flush=True)
        self.model.save_replay_buffer(self.work / "replay.tmp.pkl")
        os.replace(self.work / "replay.tmp.pkl", self.work / "replay.pkl")
        self.model.save(self.work / "model.tmp.zip")
        os.replace(self.work / "model.tmp.zip", self.work / "model.zip")
        return True


def export(state: dict, meta: dict, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / f"{name}.safetensors"))
    (out / f"{name}.json").write_text(json.dumps(meta, indent=2))
    print(f"wrote {out / name}.safetensors: {json.dumps(meta)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="gym:Hopper-v5")
    ap.add_argument("--steps", type=int, default=60_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-episodes", type=int, default=10)
    ap.add_argument("--out-dir", type=Path, default=OUT, help="where to write <Env-id>[-level].safetensors/.json")
    ap.add_argument("--work", type=Path, help="keep snapshots, evals and the resumable model here")
    ap.add_argument("--eval-every", type=int, default=10_000)
    ap.add_argument("--levels", action="store_true", help="export <Env-id>-expert and <Env-id>-medium (needs --work)")
    ap.add_argument("--medium-fraction", type=float, default=1 / 3)
    args = ap.parse_args()
    if args.levels and not args.work:
        ap.error("--levels needs --work")
    torch.set_num_threads(1)
    env = make(args.task)
    name = args.task.split(":")[-1]
    command = (
        f"python experiments/train_locomotion_expert.py --task {args.task} --steps {args.steps} --seed {args.seed}"
    )
    if args.work:
        command += f" --levels --work {args.work}" if args.levels else f" --work {args.work}"
    base_meta = {
        "task": args.task,
        "hidden": [256, 256],  # SB3 SAC's default
        "action_low": env.action_space.low.tolist(),
        "action_high": env.action_space.high.tolist(),
        "train_steps": args.steps,
        "seed": args.seed,
        "command": command,
    }
    callbacks = []
    if args.work and (args.work / "model.zip").exists():
        model = SAC.load(args.work / "model.zip", env=env)
        model.load_replay_buffer(args.work / "replay.pkl")
        print(f"resuming at step {model.num_timesteps}", flush=True)
    else:
        model = SAC("MlpPolicy", env, seed=args.seed, verbose=0, learning_starts=5000)
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        callbacks.append(Snapshots(args.work, args.task, args.eval_every, args.eval_episodes))
    left = args.steps - model.num_timesteps
    if left > 0:
        model.learn(total_timesteps=left, progress_bar=False, callback=callbacks, reset_num_timesteps=False)
    if not args.levels:
        mean, std = evaluate_policy(
            model, Monitor(make(args.task)), n_eval_episodes=args.eval_episodes, deterministic=True
        )
        meta = {
            **base_meta,
            "eval_return_mean": float(mean),
            "eval_return_std": float(std),
            "eval_episodes": args.eval_episodes,
        }
        export(actor_state(model), meta, args.out_dir, name)
        return
    evals = [json.loads(line) for line in (args.work / "evals.jsonl").read_text().splitlines()]
    evals = list({e["step"]: e for e in evals}.values())  # a resumed run may log a step twice
    best = max(evals, key=lambda e: e["return_mean"])
    target = args.medium_fraction * best["return_mean"]
    medium = min(evals, key=lambda e: abs(e["return_mean"] - target))
    for level, pick in (("expert", best), ("medium", medium)):
        state = load_file(str(args.work / "snapshots" / f"{pick['step']}.safetensors"))
        meta = {
            **base_meta,
            "level": level,
            "snapshot_step": pick["step"],
            "eval_return_mean": pick["return_mean"],
            "eval_return_std": pick["return_std"],
            "eval_episodes": args.eval_episodes,
            "expert_return": best["return_mean"],
        }
        export(state, meta, args.out_dir, f"{name}-{level}")


if __name__ == "__main__":
    main()
