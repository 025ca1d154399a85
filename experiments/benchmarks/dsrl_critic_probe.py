"""How much do a DSRL-NA run's critics know about the noise? Read from its last checkpoint.

For 64 states from the replay buffer and 32 noises w ~ N(0, I) each (clipped to the bound), it
prints how much the action critic's Q_A(s, base(s, w)) varies across noises within a state
against across states, how well the noise critic Q_W(s, w) follows Q_A *within* a state (the
only part the noise actor's gradient sees), and how far the actor's mean noise has moved.

    python experiments/benchmarks/dsrl_critic_probe.py runs/probe/na_kl4
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from stable_baselines3.common.vec_env import DummyVecEnv

from dpft.base_policies import load_policy
from dpft.base_policies.infra.run_folder import RunFolder
from dpft.finetune.dsrl import train as dsrl


@torch.no_grad()
def probe(run_dir: Path, states: int = 64, noises: int = 32, seed: int = 0) -> dict[str, float]:
    run = RunFolder(run_dir)
    cfg = replace(run.read_config(dsrl.DSRLConfig, dsrl.DSRL.before_key_existed), resume=True)
    base = load_policy(cfg.base)
    model, _ = dsrl.load_model(cfg, base, DummyVecEnv([dsrl.make_env_fn(cfg, base)]), run)
    torch.manual_seed(seed)
    np.random.seed(seed)
    obs = model.replay_buffer.sample(states).observations
    m, dim = cfg.action_magnitude, int(np.prod(base.noise_shape))
    u = torch.clamp(torch.randn(states, noises, dim), -m, m).flatten(0, 1) / m
    o = obs.repeat_interleave(noises, dim=0)
    q_a = torch.cat(model.action_critic(o, model.executed(o, u)), 1).min(1).values.view(states, noises)
    q_w = torch.cat(model.critic(o, u), 1).min(1).values.view(states, noises)
    mu, _, _ = model.actor.get_action_dist_params(obs)
    corr = [np.corrcoef(q_a[i].numpy(), q_w[i].numpy())[0, 1] for i in range(states)]
    return {
        "env_steps": model.num_timesteps * base.action_horizon,
        "q_a_std_within_state": q_a.std(1).mean().item(),
        "q_a_std_across_states": q_a.mean(1).std().item(),
        "q_w_vs_q_a_corr_within_state": float(np.nanmean(corr)),
        "mean_noise_norm": (m * torch.tanh(mu)).norm(dim=1).mean().item(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    for run_dir in ap.parse_args().runs:
        print(run_dir, {k: round(v, 3) for k, v in probe(run_dir).items()}, flush=True)


if __name__ == "__main__":
    main()
