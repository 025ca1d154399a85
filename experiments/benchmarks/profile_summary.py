"""Sum a py-spy raw profile of a DSRL-NA run into where the time goes.

    py-spy record -r 50 -f raw -o prof.txt -- python -m dpft.finetune finetune dsrl \\
        --config experiments/configs/bench/dsrl_push.yaml --steps 8000 --eval-every 100000 \\
        --checkpoint-every 100000 --out /tmp/prof --no-progress
    python experiments/benchmarks/profile_summary.py prof.txt

Each sample is put in the first category whose frame it contains (the order below).
"""

import collections
import sys


def cat(stack):
    if "evaluate (finetune/commands/evaluate.py" in stack:
        return "periodic + final evaluation (rollouts with the steered policy)"
    if "DSRLNA.executed" in stack:
        return "train: base denoises w' ~ pi(s') for the TD target (batch 128)"
    if "chunks_for" in stack:
        return "collect: base denoises the chosen noise + 4 distillation noises"
    if "ChunkedEnv.step" in stack:
        return "collect: simulator (Meta-World / MuJoCo)"
    if "DSRLNA.train" in stack:
        if "backward" in stack:
            return "train: backward passes (3 networks)"
        if "Adam.step" in stack or "Optimizer" in stack:
            return "train: optimiser steps"
        if "ReplayBuffer.sample" in stack or "Buffer.sample" in stack or "_get_samples" in stack:
            return "train: replay sampling"
        if "polyak" in stack:
            return "train: target-network updates"
        return "train: forward passes, losses, logging"
    if "collect_rollouts" in stack:
        return "collect: actor forward + SB3 bookkeeping"
    if "learn (" in stack:
        return "SB3 loop, callbacks, checkpoints"
    return "start-up (imports, loading, env creation)"


def main() -> None:
    total, cats = 0, collections.Counter()
    for line in open(sys.argv[1]):
        stack, _, n = line.rstrip().rpartition(" ")
        total += int(n)
        cats[cat(stack)] += int(n)
    print("| where | share of samples |\n|---|---|")
    for k, v in cats.most_common():
        print(f"| {k} | {100 * v / total:.1f}% |")
    print(f"\n{total} samples")


if __name__ == "__main__":
    main()
