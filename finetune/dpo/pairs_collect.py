"""``dpft prefs collect``: roll a policy out K times per start state and rank the rollouts into pairs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from dpft.base_policies.checkpoint import DEFAULT_BASE, load_policy
from dpft.base_policies.infra.device import check_device_spec, resolve_device
from dpft.base_policies.infra.errors import ConfigError
from dpft.base_policies.infra.paths import check_output_file
from dpft.base_policies.infra.registry import multi_process
from dpft.base_policies.policy import Policy
from dpft.envs.chunking import check_policy_fits
from dpft.envs.config import EnvConfig
from dpft.finetune.common.distributed import Shard, current_shard, local_device_spec
from dpft.finetune.dpo.prefs import Prefs, labels_path, write_prefs
from dpft.finetune.dpo.sampling import (
    BRANCH_NOISE,
    PAIRINGS,
    RANKS,
    SAMPLERS,
    branch_groups,
    make_pairs,
    rollout_groups,
)


@dataclass
class PairsConfig:
    """How pairs are made (shared by `dpft prefs collect` and the rounds of `dpft finetune dpo`)."""

    RANGES: ClassVar[dict[str, str]] = {
        "states": ">= 1",
        "streams": ">= 2",
        "chunk_states": ">= 0",
        "chunk_streams": ">= 2",
        "horizon": ">= 0",
        "noise_level": ">= 0",
        "noise_scales": ">= 0",
        "min_margin": ">= 0",
        "max_pairs_per_state": ">= 0",
    }
    """Declared range of each numeric setting (dpft.base_policies.infra.ranges)."""

    states: int = 16
    """Start states (reset seeds seed, seed+1, ...) per collection."""
    streams: int = 4
    """Rollouts per start state, each with its own noise."""
    chunk_states: int = 0
    """Also this many chunk-level pair states: a saved mid-episode state, branched --chunk-streams times."""
    chunk_streams: int = 2
    """Branches per chunk-level state."""
    horizon: int = 0
    """Decisions a branch runs after its own chunk before it is scored (0: to the end of the episode)."""
    branch_noise: str = "own"
    """own: each branch draws its own noise for every decision; shared: after its own chunk, the
    branches of a state draw the same noise (common random numbers), so their outcomes differ by
    the branch chunk and less by the luck of the later draws (ddim sampler)."""
    noise_scales: list[float] = field(default_factory=lambda: [1.0])
    """Scale of each stream's initial noise, cycled over a start state's streams and over a chunk
    state's branches (ddim sampler): `0 1` makes every other rollout (and branch) run the policy's
    zero-noise mode, so pairs set the mode against N(0, I) samples."""
    sampler: str = "ddim"
    """ddim (the policy as it is evaluated) or stochastic (the sampler's chain is kept; D3PO needs it)."""
    noise_level: float | None = None
    """Noise level of the stochastic sampler (default: the policy's own, DDPM for diffusion)."""
    rank: str = "success-return"
    """Ranking: success-return (success first, then return), success, or return."""
    min_margin: float = 0.0
    """Keep a pair only when the returns differ by more than this (a success difference always counts)."""
    max_pairs_per_state: int = 0
    """At most this many pairs per start state (random ones; 0 = every pair that passes)."""
    pairing: str = "all"
    """all: every two members of a start state (or chunk state) whose scores differ; best: only
    pairs whose preferred member is the best of its state (best against the rest), so filtered BC
    trains on each state's best sample alone (best-of-N) and DPO contrasts it with every other."""
    unlabelled: bool = False
    """Write disjoint pairs without a label, for a person to label with `dpft prefs label`."""

    def describe(self) -> str:
        """How the pairs were made, in a line a prefs file keeps (its meta ``collection``)."""
        scales = " ".join(f"{x:g}" for x in self.noise_scales)
        return (
            f"states {self.states} x streams {self.streams}, chunk states {self.chunk_states} x branches "
            f"{self.chunk_streams}, horizon {self.horizon}, branch noise {self.branch_noise}, "
            f"noise scales {scales}, rank {self.rank}, min margin {self.min_margin:g}, "
            f"max pairs per state {self.max_pairs_per_state}, pairing {self.pairing}"
        )

    def check(self) -> None:
        if self.states < 1 or self.streams < 2:
            raise ConfigError(f"--states ({self.states}) must be >= 1 and --streams ({self.streams}) >= 2")
        if self.chunk_states < 0 or (self.chunk_states and self.chunk_streams < 2) or self.horizon < 0:
            raise ConfigError("--chunk-states and --horizon must be >= 0, --chunk-streams >= 2")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"--sampler {self.sampler!r}: choose one of {SAMPLERS}")
        if self.branch_noise not in BRANCH_NOISE:
            raise ConfigError(f"--branch-noise {self.branch_noise!r}: choose one of {BRANCH_NOISE}")
        if self.branch_noise == "shared" and self.sampler != "ddim":
            raise ConfigError("--branch-noise shared needs --sampler ddim (the stochastic sampler shares its own)")
        if not self.noise_scales or any(x < 0 for x in self.noise_scales):
            raise ConfigError(f"--noise-scales {self.noise_scales}: give one or more scales >= 0")
        if any(x != 1 for x in self.noise_scales) and self.sampler != "ddim":
            raise ConfigError("--noise-scales needs --sampler ddim (the stochastic sampler draws its own noise)")
        if self.rank not in RANKS:
            raise ConfigError(f"--rank {self.rank!r}: choose one of {RANKS}")
        if self.pairing not in PAIRINGS:
            raise ConfigError(f"--pairing {self.pairing!r}: choose one of {PAIRINGS}")
        if (
            self.min_margin < 0
            or self.max_pairs_per_state < 0
            or (self.noise_level is not None and self.noise_level < 0)
        ):
            raise ConfigError("--min-margin, --max-pairs-per-state and --noise-level must be >= 0")


@dataclass
class PrefsCollectConfig(EnvConfig, PairsConfig):
    """Collect preference pairs: K rollouts per start state, ranked by success then return."""

    task: str | None = None  # type: ignore[assignment]
    """Task id (default: the task the policy was trained for)."""
    envs: int = 32
    """Envs stepped together (the policy is called once per decision for all of them)."""
    policy: str = DEFAULT_BASE
    """Policy folder, run folder or shipped:<name> that produces the rollouts."""
    out: Path = Path("prefs.hdf5")
    """Output file (.hdf5); the pair index is written beside it as <stem>.jsonl."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    overwrite: bool = False
    """Replace --out if it exists."""
    json: bool = False
    """Print the file's statistics as one JSON object."""

    def __post_init__(self) -> None:
        EnvConfig.__post_init__(self)
        self.check()
        check_device_spec(self.device)


def collect_prefs(
    policy: Policy,
    source: str,
    env_cfg: EnvConfig,
    cfg: PairsConfig,
    seed: int,
    round_: int = 0,
    first_id: int = 0,
    prefix: str = "",
    shard: Shard | None = None,
) -> Prefs:
    """Rollouts and pairs of one collection; reset seeds ``seed .. seed + states - 1``. With a
    ``shard`` the rollouts are split across the processes and every process gets all pairs."""
    seeds = [seed + j for j in range(cfg.states)]
    common = dict(sampler=cfg.sampler, noise_level=cfg.noise_level, round_=round_, batch_envs=env_cfg.envs, shard=shard)
    common |= dict(noise_scales=tuple(cfg.noise_scales))
    traj = rollout_groups(policy, env_cfg, seeds, cfg.streams, seed=seed, **common)
    rollouts = {f"{prefix}r{i:06d}": r for i, r in enumerate(traj)}
    labelled = not cfg.unlabelled
    pair_args = dict(
        rank=cfg.rank, min_margin=cfg.min_margin, max_pairs_per_group=cfg.max_pairs_per_state, pairing=cfg.pairing
    )
    pairs = make_pairs(
        rollouts, "trajectory", **pair_args, labelled=labelled, policy=source, seed=seed, first_id=first_id
    )
    if cfg.chunk_states and not any(len(r.chunks) >= 2 for r in traj):
        # a task whose episodes are one decision has no mid-episode state to branch from (the preset asks
        # for chunk-level pairs on every task that reports success): the rollout pairs are all there is
        if (shard or Shard()).is_main:
            print("note: every rollout ended after one decision, so there are no chunk-level pairs", flush=True)
    elif cfg.chunk_states:
        horizon = cfg.horizon or None
        branches = branch_groups(
            policy,
            env_cfg,
            traj,
            cfg.chunk_states,
            cfg.chunk_streams,
            horizon,
            seed=seed,
            first_group=cfg.states,
            shared_after=cfg.branch_noise == "shared",
            **common,
        )
        branch_ids = {f"{prefix}r{len(rollouts) + i:06d}": r for i, r in enumerate(branches)}
        rollouts.update(branch_ids)
        pairs += make_pairs(
            branch_ids,
            "chunk",
            **pair_args,
            labelled=labelled,
            policy=source,
            seed=seed,
            first_id=first_id + len(pairs),
        )
    meta = {
        "task": env_cfg.task,
        "obs_dim": policy.obs_dim,
        "action_dim": policy.action_dim,
        "obs_horizon": policy.obs_horizon,
        "pred_horizon": policy.pred_horizon,
        "action_horizon": policy.action_horizon,
        "denoising_steps": len(getattr(policy, "timesteps", ())),
        "sampler": cfg.sampler,
        "noise_level": (
            ""
            if cfg.sampler != "stochastic"
            else float(policy.default_noise_level if cfg.noise_level is None else cfg.noise_level)
        ),
        "policy": source,
        "collection": cfg.describe(),
        "reward": env_cfg.reward or "",
        "max_episode_steps": env_cfg.max_episode_steps or 0,
    }
    return Prefs(meta, rollouts, pairs)


@multi_process
def prefs_collect(cfg: PrefsCollectConfig) -> Prefs:
    """``dpft prefs collect``; under ``accelerate launch`` (``--processes N``) the rollouts are
    split across the processes and the main one writes the file."""
    shard = current_shard()
    check_output_file(cfg.out, cfg.overwrite, "--out", (".hdf5", ".h5"))
    if labels_path(cfg.out).exists():  # its answers name the old file's pair ids, which the new file reuses
        raise ConfigError(
            f"{labels_path(cfg.out)} holds a person's answers for the pairs of the existing {cfg.out}; "
            "move it (and the file) away, or choose another --out"
        )
    policy = load_policy(cfg.policy, resolve_device(local_device_spec(cfg.device)))
    task = cfg.task or getattr(getattr(policy, "config", None), "task", None)
    if not task:
        raise ConfigError(f"{cfg.policy} does not record its task; pass --task")
    cfg = replace(cfg, task=task)
    probe = cfg.make_env()
    try:
        check_policy_fits(policy, probe, task)
    finally:
        probe.close()
    prefs = collect_prefs(policy, cfg.policy, cfg, cfg, cfg.seed, shard=shard)
    if not shard.is_main:
        return prefs
    write_prefs(cfg.out, prefs)
    stats = prefs.stats()
    print(json.dumps(stats) if cfg.json else format_stats(cfg.out, stats))
    return prefs


def format_stats(path: Path, s: dict) -> str:
    succ = "n/a" if s["rollout_success"] is None else f"{s['rollout_success']:.2f}"
    return (
        f"{path}: {s['pairs']} pairs {s['kinds']} labels {s['labels']} sources {s['sources']}\n"
        f"  {s['rollouts']} rollouts from {s['start_states']} start states, {s['env_steps']} env steps, "
        f"rollout success {succ}, sampler {s['sampler']}, policy {s['policy']}\n"
        f"  made with {s['collection']}"
    )
