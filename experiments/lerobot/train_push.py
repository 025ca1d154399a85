"""Train a LeRobot diffusion policy on Meta-World push demonstrations, with LeRobot's own model,
loss and normaliser, so dpft's LeRobot path can be shown on a checkpoint that acts like one a
user trained (not only on the random-weight references the tests use).

Runs in a LeRobot environment (``make lerobot-check`` builds ``.venv-lerobot-0.4.4``; this script
also needs ``h5py`` there: ``.venv-lerobot-0.4.4/bin/pip install h5py``)::

    dpft collect --task metaworld:push-v3 --episodes 30 --action-noise 0.3 --seed 100 --out runs/lerobot_push/demos.hdf5
    OMP_NUM_THREADS=1 .venv-lerobot-0.4.4/bin/python experiments/lerobot/train_push.py \\
        runs/lerobot_push/demos.hdf5 experiments/lerobot/push_diffusion --steps 6000 --seed 0

It is LeRobot's ``DiffusionPolicy`` trained by a plain loop rather than ``lerobot-train`` (which
needs a ``LeRobotDataset``): windows are built as LeRobot's dataset builds them
(``n_obs_steps`` observations back, ``horizon`` actions from ``1 - n_obs_steps``, copies past the
ends of an episode), statistics are the dataset's min/max, and the optimiser is LeRobot's preset
for this policy (Adam, lr 1e-4, betas 0.95/0.999, weight decay 1e-6). The Meta-World observation
(39 values) is split as LeRobot's features: ``observation.state`` = hand position and gripper
(4), ``observation.environment_state`` = the rest (35).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors

STATE_DIM = 4
STATE, ENV, ACTION = "observation.state", "observation.environment_state", "action"


def episodes(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    with h5py.File(path, "r") as f:
        return [(f["data"][k]["obs"][()], f["data"][k]["actions"][()]) for k in sorted(f["data"])]


def windows(eps, n_obs: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Every step's (observation history, action window), padded by copies at the episode's ends."""
    obs_w, act_w = [], []
    for obs, act in eps:
        T = len(obs)
        for t in range(T):
            oi = np.clip(np.arange(t - n_obs + 1, t + 1), 0, T - 1)
            ai = np.clip(np.arange(t - n_obs + 1, t - n_obs + 1 + horizon), 0, T - 1)
            obs_w.append(obs[oi])
            act_w.append(act[ai])
    return np.stack(obs_w).astype(np.float32), np.stack(act_w).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("demos", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--down-dims", type=int, nargs="+", default=[32, 64, 128])
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    eps = episodes(args.demos)
    obs_dim, act_dim = eps[0][0].shape[1], eps[0][1].shape[1]
    config = DiffusionConfig(
        input_features={
            STATE: PolicyFeature(FeatureType.STATE, (STATE_DIM,)),
            ENV: PolicyFeature(FeatureType.ENV, (obs_dim - STATE_DIM,)),
        },
        output_features={ACTION: PolicyFeature(FeatureType.ACTION, (act_dim,))},
        n_obs_steps=2, horizon=16, n_action_steps=8, down_dims=tuple(args.down_dims), diffusion_step_embed_dim=64,
        noise_scheduler_type="DDIM", num_train_timesteps=100, num_inference_steps=10, device="cpu",
    )  # fmt: skip
    all_obs, all_act = np.concatenate([o for o, _ in eps]), np.concatenate([a for _, a in eps])

    def stats(x: np.ndarray) -> dict[str, torch.Tensor]:
        x = torch.as_tensor(x)
        return {"min": x.min(0).values, "max": x.max(0).values, "mean": x.mean(0), "std": x.std(0)}

    dataset_stats = {STATE: stats(all_obs[:, :STATE_DIM]), ENV: stats(all_obs[:, STATE_DIM:]), ACTION: stats(all_act)}
    policy = DiffusionPolicy(config).train()
    pre, post = make_diffusion_pre_post_processors(config, dataset_stats)
    obs_w, act_w = windows(eps, config.n_obs_steps, config.horizon)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-4, betas=(0.95, 0.999), eps=1e-8, weight_decay=1e-6)
    g = torch.Generator().manual_seed(args.seed)
    log, start = [], time.time()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(obs_w), (args.batch,), generator=g)
        o, a = torch.as_tensor(obs_w[idx]), torch.as_tensor(act_w[idx])
        raw = {STATE: o[..., :STATE_DIM], ENV: o[..., STATE_DIM:], ACTION: a,
               "action_is_pad": torch.zeros(a.shape[:2], dtype=torch.bool)}  # fmt: skip
        loss, _ = policy.forward(pre(raw))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 500 == 0 or step == args.steps:
            log.append({"step": step, "loss": loss.item(), "wall_s": round(time.time() - start, 1)})
            print(json.dumps(log[-1]), flush=True)
    policy.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(args.out)
    pre.save_pretrained(args.out)
    post.save_pretrained(args.out)
    info = {"demos": str(args.demos), "episodes": len(eps), "windows": len(obs_w), "steps": args.steps,
            "batch": args.batch, "seed": args.seed, "down_dims": args.down_dims, "log": log}  # fmt: skip
    (args.out.parent / f"{args.out.name}.train.json").write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
