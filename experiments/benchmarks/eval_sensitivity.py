"""How much does a tiny change of a steered policy move its evaluation?

    python experiments/benchmarks/eval_sensitivity.py --policy runs/.../policy \
        --reward "sparse_success(terminate=True)" --episodes 30 --seed 1000000

A DSRL run's periodic evaluations can swing from 1.00 to 0.30 between two points 5k env steps
apart. This separates two explanations: the critic and actor really moved far, or the policy's
mean noise sits on the boundary between two of the base's modes, so that any small change flips
whole episodes. It evaluates, on the same episodes (one line each):

* the policy as saved;
* the policy after one random step of Adam's size (every weight of the noise actor moved by
  ``--step`` with a random sign), three draws: what one more gradient step can do;
* the policy with N(0, eps²) added to its chosen noise at every chunk, for a few eps.

A policy well inside a mode scores the same on every line; one on a boundary does not.
"""

from __future__ import annotations

import argparse
import json

import torch
from benchlib import score as score_of

from dpft.base_policies import CheckpointError, load_policy
from dpft.envs.config import EnvConfig
from dpft.finetune.common.policy_eval import evaluate


def load_steered(path: str):
    """The steered policy at ``path``, or one clear message (not a traceback) when it is not one."""
    try:
        policy = load_policy(path)
    except CheckpointError as e:
        raise SystemExit(f"eval_sensitivity: {e}") from None
    if not hasattr(policy, "noise_for"):
        raise SystemExit(
            f"eval_sensitivity: {path} is not a steered (dsrl) policy; pass a dpft finetune dsrl run's policy"
        )
    return policy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", required=True, help="a steered (dsrl) policy folder")
    ap.add_argument("--reward", default=None)
    ap.add_argument("--episodes", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1_000_000, help="the run's evaluation seed (1,000,000 + run seed)")
    ap.add_argument("--step", type=float, default=3e-4, help="per-weight size of the random step (Adam: the lr)")
    ap.add_argument("--eps", type=float, nargs="+", default=[0.05, 0.2])
    args = ap.parse_args()
    torch.set_num_threads(1)

    def score(policy) -> float:
        cfg = EnvConfig(task=policy.config.task, envs=8, seed=args.seed, reward=args.reward)
        return score_of(evaluate(policy, cfg, args.episodes))

    rows = [{"change": "none (as saved)", "score": score(load_steered(args.policy))}]
    for draw in range(3):
        policy = load_steered(args.policy)
        gen = torch.Generator().manual_seed(draw)
        with torch.no_grad():
            for w in policy.actor.parameters():
                w += args.step * torch.sign(torch.randn(w.shape, generator=gen))
        rows.append({"change": f"one random step of {args.step:g} per weight, draw {draw}", "score": score(policy)})
    for eps in args.eps:
        policy = load_steered(args.policy)
        chosen, gen = policy.noise_for, torch.Generator().manual_seed(1)

        def jittered(obs, e=None, chosen=chosen, eps=eps, gen=gen):
            w = chosen(obs, e)
            return w + eps * torch.randn(w.shape, generator=gen)

        policy.noise_for = jittered
        rows.append({"change": f"chosen noise + N(0, {eps:g}^2) per chunk", "score": score(policy)})
    for row in rows:
        print(json.dumps({"policy": args.policy, "episodes": args.episodes, "seed": args.seed, **row}), flush=True)


if __name__ == "__main__":
    main()
