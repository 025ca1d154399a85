"""Reference point for the DSRL benchmark: plain SAC from scratch on the task, no base policy.

Same task, reward wrapper, budget, evaluation schedule, run folder and ``--resume`` as a DSRL
run -- it is the shared run loop (:func:`dpft.finetune.common.run.run_sb3`) with a method that
has no base -- so the table can show what the base policy buys. The result in OUT/policy is an
``actor`` policy that ``dpft eval`` evaluates like any other.

    python experiments/benchmarks/sac_scratch.py --task metaworld:push-v3 --seed 0 --steps 100000 \
        --reward "sparse_success(terminate=True)" --out runs/bench_dsrl/push/scratch/seed0
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import torch
import tyro
from stable_baselines3 import SAC

from dpft.base_policies.actor_policy import ActorPolicy
from dpft.base_policies.infra.device import resolve_device
from dpft.base_policies.sb3_actor import SquashedMeanActor
from dpft.finetune.common.config import FinetuneConfig
from dpft.finetune.common.run import SB3Method, run_sb3


@dataclass
class ScratchConfig(FinetuneConfig):
    """SAC from scratch on a task (the no-base-policy reference of the DSRL benchmark)."""

    base: str = ""
    """Unused: SAC from scratch has no base policy."""
    out: Path = Path("runs/sac_scratch")
    """Run folder; the actor is written to OUT/policy."""
    steps: int = 100_000
    """Environment-step budget."""
    warmup_steps: int = 2000
    """Uniform random actions before learning starts (SB3's learning_starts)."""
    eval_episodes: int = 30
    """Episodes per evaluation."""


class SACFromScratch(SB3Method):
    command = "sac_scratch.py"
    config_cls = ScratchConfig
    uses_base = False

    def resume_hint(self, cfg: ScratchConfig) -> str:
        return f"python experiments/benchmarks/sac_scratch.py --out {cfg.out} --resume"

    def make_env(self, cfg: ScratchConfig, base: None) -> gym.Env:
        return cfg.make_env()

    def algorithm(self, cfg: ScratchConfig) -> type[SAC]:
        return SAC

    def new_model(self, cfg: ScratchConfig, base: None, venv) -> SAC:
        return SAC(
            "MlpPolicy",
            venv,
            learning_starts=cfg.warmup_steps,
            seed=cfg.seed,
            verbose=0,
            device=resolve_device(cfg.device),
        )

    def artifact(self, model: SAC, base: None, cfg: ScratchConfig) -> ActorPolicy:
        space = model.action_space
        actor = SquashedMeanActor.from_sb3(model.policy.actor)
        meta = {"task": cfg.task, "provenance": {"method": "sac from scratch", "run": str(cfg.out)}}
        return ActorPolicy(actor, space.low, space.high, meta).to(model.device)


def main() -> None:
    torch.set_num_threads(1)
    run_sb3(tyro.cli(ScratchConfig, description=__doc__.split("\n")[0]), SACFromScratch())


if __name__ == "__main__":
    main()
