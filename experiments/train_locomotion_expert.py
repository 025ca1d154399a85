"""Train a stable-baselines3 SAC expert for a locomotion task and export its actor.

    python experiments/train_locomotion_expert.py --task gym:Hopper-v5 --steps 60000 --seed 0

The deterministic actor (mean action) is written to
``envs/experts/weights/<Env-id>.safetensors`` plus a JSON file with its architecture and the
evaluation return, so the expert loads without SB3's pickled zip. Training for fewer steps
than a full run gives a deliberately "medium" expert, like D4RL's medium datasets.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from stable_baselines3 import SAC
from stable_baselines3.common.evaluation import evaluate_policy

from dpft.base_policies.sb3_actor import SquashedMeanActor
from dpft.envs.tasks import make

OUT = Path(__file__).resolve().parent.parent / "envs" / "experts" / "weights"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="gym:Hopper-v5")
    ap.add_argument("--steps", type=int, default=60_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-episodes", type=int, default=10)
    ap.add_argument("--out-dir", type=Path, default=OUT, help="where to write <Env-id>.safetensors/.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    env = make(args.task)
    model = SAC("MlpPolicy", env, seed=args.seed, verbose=0, learning_starts=5000)
    model.learn(total_timesteps=args.steps, progress_bar=False)
    mean, std = evaluate_policy(model, make(args.task), n_eval_episodes=args.eval_episodes, deterministic=True)
    state = SquashedMeanActor.from_sb3(model.policy.actor).state_dict()
    name = args.task.split(":")[-1]
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(out / f"{name}.safetensors"))
    meta = {
        "task": args.task,
        "hidden": list(model.policy.net_arch["pi"] if isinstance(model.policy.net_arch, dict) else [256, 256]),
        "action_low": env.action_space.low.tolist(),
        "action_high": env.action_space.high.tolist(),
        "train_steps": args.steps,
        "seed": args.seed,
        "eval_return_mean": float(mean),
        "eval_return_std": float(std),
        "eval_episodes": args.eval_episodes,
        "command": f"python experiments/train_locomotion_expert.py --task {args.task} --steps {args.steps} "
        f"--seed {args.seed}",
    }
    (out / f"{name}.json").write_text(json.dumps(meta, indent=2))
    print(json.dumps(meta, indent=2), np.isfinite(mean))


if __name__ == "__main__":
    main()
