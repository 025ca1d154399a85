"""The settings every fine-tuning method has; a method's config dataclass subclasses this."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from dpft.base_policies.checkpoint import DEFAULT_BASE
from dpft.base_policies.infra.device import check_device_spec
from dpft.base_policies.infra.errors import ConfigError
from dpft.envs.config import EnvConfig


@dataclass
class FinetuneConfig(EnvConfig):
    """Fine-tune a frozen base policy (settings shared by every method)."""

    RANGES: ClassVar[dict[str, str]] = {
        "steps": ">= 1",
        "eval_every": ">= 1",
        "eval_episodes": ">= 1",
        "validation_episodes": ">= 1",
        "checkpoint_every": ">= 1",
    }
    """Declared range of each numeric setting (dpft.base_policies.infra.ranges)."""

    base: str = DEFAULT_BASE
    """Base policy folder, run folder, or shipped:<name>. Its weights never change."""
    task: str | None = None  # type: ignore[assignment]
    """Task id (default: the task the base policy was trained for)."""
    envs: int = 1
    """Parallel environments (SB3 DummyVecEnv)."""
    out: Path = Path("runs/finetune")
    """Run folder; the fine-tuned policy is written to OUT/policy."""
    steps: int = 50_000
    """Environment-step budget."""
    device: str = "auto"
    """auto (a CUDA GPU if there is one), cpu, cuda or cuda:N: where the base, the learned parts and
    the replay batches live."""
    eval_every: int = 5000
    """Environment steps between evaluations of the fine-tuned policy."""
    reward: str | None = None
    """Reward spec, e.g. dense (the task's own), sparse_success(terminate=True), or my_module:my_fn
    (default: from the task's preset: the sparse success reward that ends the episode on a task that
    reports success, the task's own reward otherwise)."""
    eval_episodes: int | None = None
    """Episodes per evaluation, the same episodes every time: seed + 1,000,000 (default: from the
    task's preset: 30 on a task that reports success, 10 otherwise)."""
    final: Literal["last", "best", "guarded"] | None = None
    """What OUT/policy holds at the end (default: guarded): the last policy; the best evaluated one (every
    --eval-every evaluation and the final one, on the same episodes; best_policy.json says which);
    or guarded: the base until a policy beats it with 95% confidence on validation episodes of its
    own, then the latest such policy (guarded.json says which; costs one more evaluation each time)."""
    validation_episodes: int | None = None
    """--final guarded: validation episodes per evaluation (default: --eval-episodes). More of them
    narrow the 95% test, so a better policy passes sooner; a near-perfect base can only be replaced
    with many (a candidate's 30 of 30 has a lower bound of 0.886, 100 of 100 of 0.963)."""
    checkpoint_every: int = 10_000
    """Environment steps between atomic checkpoints (what --resume continues from)."""
    resume: bool = False
    """Continue the run in --out from its last checkpoint."""
    overwrite: bool = False
    """Replace the run already in --out (its checkpoint, policy, logs); without it that is an error."""
    progress: bool = True
    """Show a progress bar."""
    preset: str | None = None
    """The preset the unset settings above were taken from (recorded by the run; see
    dpft.finetune.common.presets)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_device_spec(self.device)
        if self.steps < 1 or self.eval_every < 1 or self.checkpoint_every < 1 or (self.eval_episodes or 1) < 1:
            raise ConfigError("--steps, --eval-every, --eval-episodes and --checkpoint-every must be positive")
        if self.validation_episodes is not None and self.validation_episodes < 1:
            raise ConfigError(f"--validation-episodes must be positive, got {self.validation_episodes}")

    @property
    def eval_seed(self) -> int:
        """Evaluation episodes never overlap the training episodes' seeds."""
        return self.seed + 1_000_000


@dataclass
class OnPolicyConfig(FinetuneConfig):
    """The PPO settings of the on-policy methods (FIND, DPPO); each method sets its own defaults."""

    RANGES: ClassVar[dict[str, str]] = {
        "lr": "(0, 1]",
        "gamma": "[0, 1]",
        "gae_lambda": "[0, 1]",
        "rollout_steps": ">= 1",
        "batch_size": ">= 1",
        "epochs": ">= 1",
        "clip_range": "(0, 1)",
        "target_kl": ">= 0",
    }
    """Declared range of each numeric setting (dpft.base_policies.infra.ranges)."""

    envs: int = 8
    """Parallel environments; each collects --rollout-steps chunk decisions per update."""
    steps: int = 100_000
    """Environment-step budget."""
    lr: float = 3e-4
    """Adam learning rate."""
    gamma: float = 0.99
    """Discount per environment step (per chunk decision: gamma ** action_horizon)."""
    gae_lambda: float = 0.95
    """GAE lambda over chunk decisions."""
    rollout_steps: int = 64
    """Chunk decisions per env between updates (8 envs x 64 x 4 env steps = 2k env steps)."""
    batch_size: int = 128
    """Minibatch size (decisions) of a gradient step."""
    epochs: int = 10
    """Passes over each rollout."""
    clip_range: float = 0.2
    """Ratio clipping against the policy that collected the rollout."""
    target_kl: float = 0.0
    """Stop an update's epochs early past this approximate KL (0: never)."""

    def check_processes(self, method: str, world: int) -> None:
        """Several processes must take the same number of epochs, so a per-process KL stop is refused."""
        if self.target_kl:
            raise ConfigError(
                f"{method} on {world} processes needs --target-kl 0: each process would stop its epochs at its own "
                "KL, and the processes' updates would fall out of step"
            )
