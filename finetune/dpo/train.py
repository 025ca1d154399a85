"""``dpft finetune dpo``: update the denoiser itself from preference pairs, in rounds.

Each round: (collect pairs with the current policy, unless the round's data was given or is
already on disk) -> ``steps_per_round`` gradient steps on the pairs of every round so far ->
evaluation on fixed episodes, with the win rate against the base on the same start states. The
reference is the base and stays frozen (``--resync-reference`` copies the policy into it after
each round instead). The artifact is an ordinary diffusion/flow policy folder with new weights
whose ``config.json`` records where they came from.

Run folder: ``config.yaml``, ``tb/``, ``checkpoint/`` (model, reference, optimiser, EMA, round
and step, base evaluation), ``prefs/round_NNN.hdf5`` (+ ``.jsonl``: every round's data, kept),
``evals.jsonl`` (the base's evaluation as round -1 at 0 env steps, then one per round, with the
env steps of rollouts used so far), ``final_eval.json`` (the last round's), ``policy/``. A run
killed at any point resumes from its last checkpoint (every ``checkpoint_every`` steps and the
end of every round); ``--resume --rounds N`` with a larger N adds rounds to a finished run.

Several processes (``--processes N`` or ``accelerate launch``): data-parallel learners, see
:func:`train_dpo`. The main process writes the run folder and the others read its round files
and checkpoint, so on several machines ``--out`` must be on a filesystem they share.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from safetensors.torch import save_file

from dpft.base_policies.checkpoint import DEFAULT_BASE, load_policy, load_weights
from dpft.base_policies.ema import EMA
from dpft.base_policies.infra.device import check_device_spec, resolve_device
from dpft.base_policies.infra.errors import CheckpointError, ConfigError, TrainingError
from dpft.base_policies.infra.files import check_keys, interpreting, read_json
from dpft.base_policies.infra.interrupt import RunInterrupted, graceful_stop, stop_requested
from dpft.base_policies.infra.registry import multi_process
from dpft.base_policies.infra.run_folder import open_run
from dpft.base_policies.infra.state_io import RESTART, atomic_dir, atomic_write_text, load_state, save_state
from dpft.base_policies.infra.step_loop import StepLoop
from dpft.base_policies.policy import DenoisingPolicy
from dpft.envs.chunking import check_policy_fits
from dpft.envs.config import EnvConfig
from dpft.envs.tasks import task_defines_success
from dpft.finetune.common.best import BestPolicy
from dpft.finetune.common.distributed import Shard, current_shard, local_device_spec
from dpft.finetune.common.final import choose_final
from dpft.finetune.common.guard import VALIDATION_SEED_OFFSET, Guard
from dpft.finetune.common.presets import apply_preset, with_settings
from dpft.finetune.dpo import reference
from dpft.finetune.dpo.evaluation import append_round, evaluate_episodes, log_eval, summary, win_rate
from dpft.finetune.dpo.losses import NEEDS_CHAINS, LossConfig, draw_times_noise, get_loss, prepare_batch
from dpft.finetune.dpo.pair_data import PairData, check_chains
from dpft.finetune.dpo.pairs_collect import PairsConfig, collect_prefs
from dpft.finetune.dpo.prefs import Prefs, PrefsError, check_compatible, merge, read_prefs, write_prefs


@dataclass
class DPOConfig(EnvConfig, PairsConfig):
    """Preference fine-tuning of a diffusion/flow policy (Diffusion-DPO, D3PO, filtered BC), in rounds."""

    RANGES: ClassVar[dict[str, str]] = {
        "beta": "> 0",
        "bc_weight": ">= 0",
        "clip": "(0, 1)",
        "lr": "(0, 1]",
        "batch_pairs": ">= 1",
        "chunks_per_pair": ">= 1",
        "steps_per_round": ">= 1",
        "rounds": ">= 1",
        "flip_labels": "[0, 1)",
        "ema_decay": "[0, 1)",
        "eval_episodes": ">= 1",
        "eval_seed": "[0, 1000000000]",
        "validation_episodes": ">= 1",
        "checkpoint_every": ">= 1",
    }
    """Declared range of each numeric setting (dpft.base_policies.infra.ranges)."""

    base: str = DEFAULT_BASE
    """The policy to fine-tune (a diffusion or flow policy folder, run folder or shipped:<name>)."""
    task: str | None = None  # type: ignore[assignment]
    """Task id (default: the task the base was trained for)."""
    envs: int = 32
    """Envs stepped together when collecting and evaluating."""
    prefs: tuple[Path, ...] = field(default_factory=tuple)
    """Preference files for round 0 (with a person's labels beside them applied); none: collect them."""
    out: Path = Path("runs/dpo")
    """Run folder."""
    loss: str | None = None
    """diffusion-dpo, d3po, filtered-bc, seppo (the preferred members only, against samples of an
    earlier round's policy drawn as the reference), or a loss added with register_loss (default: from
    the task's preset, filtered-bc where the task reports success, diffusion-dpo otherwise)."""
    states: int | None = None
    """Start states (reset seeds seed, seed+1, ...) per round's collection (default: from the preset,
    128 where the task reports success, 16 otherwise)."""
    streams: int | None = None
    """Rollouts per start state, each with its own noise (default: from the preset, 2 / 4)."""
    chunk_states: int | None = None
    """Also this many chunk-level pair states per round: a saved mid-episode state, branched
    --chunk-streams times (default: from the preset, 120 / 0)."""
    chunk_streams: int | None = None
    """Branches per chunk-level state (default: from the preset, 2)."""
    noise_scales: list[float] | None = None
    """Scale of each stream's initial noise, cycled over a start state's streams and a chunk state's
    branches (ddim sampler): `0 1` runs the policy's zero-noise mode in every other rollout (default:
    from the preset, `0 1` where the task reports success, `1` otherwise or with --sampler stochastic)."""
    pairing: str | None = None
    """all: every two members of a state whose scores differ; best: only the pairs won by the state's
    best member, so filtered BC trains on the best of N alone (default: from the preset, best / all)."""
    beta: float = 100.0
    """Inverse temperature of the preference loss (denoising errors are means over the chunk; on
    push 100 did better than 20 or 500, experiments/results/dpo_pilots)."""
    bc_weight: float = 1.0
    """Weight of a BC term on the preferred chunks (without it both likelihoods can fall together:
    on the bimodal test task, lr 1e-4 without it lost its gain in the second round)."""
    clip: float = 0.2
    """D3PO: the ratio of model to reference likelihood is clamped to [1 - clip, 1 + clip]."""
    lr: float = 1e-5
    """Adam learning rate (1e-4 made the push base worse within one round)."""
    batch_pairs: int = 32
    """Pairs per gradient step."""
    chunks_per_pair: int = 8
    """Chunks compared per pair and step (random decisions of a trajectory pair)."""
    steps_per_round: int = 500
    """Gradient steps per round."""
    rounds: int | None = None
    """Rounds of collect -> update -> evaluate (default: from the task's preset: 1 on a task that
    reports success, 5 otherwise; five rounds against the base gained on both locomotion bases and
    let Meta-World policies fall, experiments/results/defaults.md)."""
    flip_labels: float = 0.0
    """Robustness check: train on labels flipped for this share of the pairs (random, fixed per pair)."""
    resync_reference: bool = False
    """Copy the policy into the reference after each round (default: the reference stays the base)."""
    ema_decay: float = 0.0
    """EMA of the weights for the saved and evaluated policy (0: off)."""
    eval_episodes: int = 50
    """Evaluation episodes after each round (and of the base before the first)."""
    eval_seed: int | None = None
    """Seed of the evaluation episodes (default 1,000,000 + seed: no training start state for seeds below 10)."""
    checkpoint_every: int = 500
    """Gradient steps between checkpoints (and one at the end of every round)."""
    final: Literal["last", "best", "guarded"] = "guarded"
    """What OUT/policy holds at the end, as for DSRL and residual runs: the last round's policy; the
    best evaluated round (best_policy.json); or guarded: the base until a round's policy beats it with
    95% confidence on validation episodes of its own (guarded.json), then the latest such policy."""
    validation_episodes: int | None = None
    """--final guarded: validation episodes per round (default: --eval-episodes)."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    resume: bool = False
    """Continue the run in --out from its last checkpoint."""
    overwrite: bool = False
    """Replace the run in --out."""
    progress: bool = True
    """Show a progress bar."""
    preset: str | None = None
    """The preset the unset settings above were taken from (recorded by the run; see
    dpft.finetune.common.presets)."""

    def __post_init__(self) -> None:
        EnvConfig.__post_init__(self)
        self.check()
        check_device_spec(self.device)
        if self.loss is not None:
            get_loss(self.loss)
        positive = {"beta": self.beta, "lr": self.lr, "batch_pairs": self.batch_pairs}
        positive |= {
            "chunks_per_pair": self.chunks_per_pair,
            "rounds": 1 if self.rounds is None else self.rounds,
            "eval_episodes": self.eval_episodes,
        }
        bad = [k for k, v in positive.items() if not v > 0]
        if bad:
            raise ConfigError(f"--{bad[0].replace('_', '-')} must be > 0")
        if self.unlabelled:
            raise ConfigError(
                "--unlabelled pairs cannot train a round; collect them with `dpft prefs collect` and label them"
            )
        if not 0 <= self.flip_labels < 1:
            raise ConfigError(f"--flip-labels ({self.flip_labels}) must be in [0, 1)")
        if self.steps_per_round < 0 or self.bc_weight < 0 or not 0 < self.clip < 1 or not 0 <= self.ema_decay < 1:
            raise ConfigError("--steps-per-round and --bc-weight must be >= 0, --clip in (0, 1), --ema-decay in [0, 1)")
        if self.checkpoint_every < 1:
            raise ConfigError("--checkpoint-every must be >= 1")
        if self.loss == "seppo" and self.resync_reference:
            raise ConfigError(
                "--loss seppo draws each round's reference from the earlier rounds itself; drop --resync-reference"
            )

    def check(self) -> None:
        """The pair settings' checks on those given; the preset's are checked when it fills them in."""
        given = {f.name: getattr(self, f.name) for f in fields(PairsConfig) if getattr(self, f.name) is not None}
        PairsConfig(**given).check()


RECORDED_BEFORE = {"loss": "diffusion-dpo", **asdict(PairsConfig())}
"""The pair settings' defaults before the preset chose them: what a resumed run whose config.yaml
lacks one of them (recorded before that setting existed) ran with."""


def dpo_preset(cfg: DPOConfig) -> tuple[DPOConfig, str | None]:
    """The task's preset recipe (dpft.finetune.common.presets) for every setting left unset. The
    stochastic sampler (D3PO) draws its own noise, so its streams stay N(0, I) whatever the preset."""
    if cfg.sampler != "ddim" and cfg.noise_scales is None:
        cfg = with_settings(cfg, noise_scales=[1.0])
    return apply_preset(cfg, "dpo")


def _base_policy(cfg: DPOConfig, device: torch.device) -> DenoisingPolicy:
    base = load_policy(cfg.base, device)
    if not isinstance(base, DenoisingPolicy):
        raise ConfigError(
            f"{cfg.base} is a {base.type_name!r} policy; preference fine-tuning updates a denoiser's own weights, "
            "so --base must be a diffusion or flow policy (for a steered or residual artifact, fine-tune its base)"
        )
    return base


def check_processes(cfg: DPOConfig, world: int) -> None:
    """Data-parallel DPO splits each batch of pairs evenly across the processes."""
    if cfg.batch_pairs % world:
        raise ConfigError(
            f"--batch-pairs {cfg.batch_pairs} does not split evenly across {world} processes; "
            f"use a multiple of {world} (each process takes an equal share of every batch)"
        )


@multi_process
def train_dpo(cfg: DPOConfig) -> DenoisingPolicy:
    """``dpft finetune dpo``. Under ``accelerate launch`` (``--processes N``) the processes are
    data-parallel learners: they collect and evaluate their share of the rollouts (the same
    pairs and episodes as one process), take an equal share of every batch of pairs (drawn by
    all from the same generator) and average their gradients, so the weights stay identical on
    every process and equal one process's up to float rounding. The run's state is the same in
    every process, so the main process alone checkpoints it and a run resumes with any number
    of processes."""
    shard = current_shard()
    if shard.world > 1:
        check_processes(cfg, shard.world)
    if shard.is_main:
        cfg, run = open_run(cfg, DPOConfig)
    shard.barrier()  # the main process has locked and repaired the folder before any other reads it
    if not shard.is_main:
        cfg, run = open_run(cfg, DPOConfig, main=False)
    device = resolve_device(local_device_spec(cfg.device))
    model = _base_policy(cfg, device)
    task = cfg.task or model.config.task
    if not task:
        raise ConfigError(f"{cfg.base} does not record its task; pass --task")
    cfg = with_settings(cfg, task=task)
    if cfg.resume:  # a run recorded before a setting existed ran at what was then its default
        cfg = with_settings(cfg, **{k: v for k, v in RECORDED_BEFORE.items() if getattr(cfg, k) is None})
    if not cfg.resume or cfg.rounds is None:  # a resumed run keeps the settings it recorded
        cfg, chosen = dpo_preset(cfg)
        if chosen and shard.is_main:
            print(chosen, flush=True)
    probe = cfg.make_env()
    try:
        check_policy_fits(model, probe, task)
    finally:
        probe.close()
    given = [(Path(p), read_prefs(p)) for p in cfg.prefs]
    if given:
        check_compatible(given, model)
        for path, prefs in given:
            if prefs.meta["task"] != task:
                raise PrefsError(
                    f"{path} was collected on task {prefs.meta['task']!r}, but this run fine-tunes on {task!r}; "
                    "pass --task to match it, or collect pairs on this task"
                )
    loss_fn = get_loss(cfg.loss)
    needs_chains = cfg.loss in NEEDS_CHAINS
    if needs_chains and (not given or cfg.rounds > 1) and cfg.sampler != "stochastic":
        raise ConfigError("--loss d3po needs the sampler chains: add --sampler stochastic (rounds collect with it)")
    if needs_chains:
        for path, prefs in given:
            check_chains(path, prefs, model, cfg.noise_level)
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    averager = EMA(model, cfg.ema_decay, warmup=False) if cfg.ema_decay else None
    ema = averager.shadow if averager is not None else None  # the saved and evaluated weights
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    loss_gen = torch.Generator().manual_seed(cfg.seed + 1)  # on the CPU: a resume may change --device
    eval_seed = 1_000_000 + cfg.seed if cfg.eval_seed is None else cfg.eval_seed
    state: dict[str, Any] = {"round": 0, "step": 0, "total_steps": 0, "base_eval": None, "env_steps": 0, "wall_s": 0.0}
    state["env_steps"] = sum(p.stats()["env_steps"] for _, p in given)  # the rollouts behind the given pairs
    if cfg.resume:
        state = _load_checkpoint(run.checkpoint_dir, model, ref, ema, opt, gen, loss_gen)
    main = shard.is_main
    if main:
        run.write_config(cfg)
    writer = run.writer(cfg) if main else _NoWriter()
    by_success = task_defines_success(task)
    prefs_dir = run.root / "prefs"
    say = print if main else _silent
    say(
        f"dpo: {cfg.loss} on {cfg.base} ({task}), rounds {state['round']} -> {cfg.rounds}, run folder {cfg.out}"
        + (f", {shard.world} processes" if shard.world > 1 else ""),
        flush=True,
    )
    if main and given:
        record_given(run.root, given, cfg.resume, say)

    def checkpoint() -> None:
        if not shard.same_everywhere(list(model.parameters())):
            raise TrainingError(
                f"the {shard.world} processes' weights differ at step {state['total_steps']}; their updates fell "
                "out of step (please report this, with the command)"
            )
        if main:
            _checkpoint(run.checkpoint_dir, model, ref, ema, opt, gen, loss_gen, state)
        shard.barrier()

    def own_checkpoint() -> None:  # a second Ctrl-C: no collective, the other processes may be stopping too
        if main:
            _checkpoint(run.checkpoint_dir, model, ref, ema, opt, gen, loss_gen, state)

    t_start, wall0 = time.perf_counter(), state.get("wall_s", 0.0)
    resume_hint = f"dpft finetune dpo --out {cfg.out} --resume"
    with graceful_stop():
        try:
            if state["base_eval"] is None:
                state["base_eval"] = evaluate_episodes(ref, cfg, cfg.eval_episodes, eval_seed, shard)
                log_eval(writer, summary(state["base_eval"], by_success), None, 0)
                base_row = {"round": -1, "env_steps": 0, "wall_s": 0.0, "pairs": 0}
                if main:
                    append_round(run.root / "evals.jsonl", base_row | summary(state["base_eval"], by_success))
            guard, best = _final_choice(cfg, run.root, state["total_steps"], shard, by_success, eval_seed, device)
            while state["round"] < cfg.rounds:
                r = state["round"]
                prefs = _round_data(cfg, run.root, given, r, model, state, shard)
                data = PairData(prefs, device, needs_chains, cfg.flip_labels, cfg.seed)
                writer.add_scalar("data/pairs", data.pairs, state["total_steps"])
                writer.add_scalar("data/env_steps", state["env_steps"], state["total_steps"])
                updates = Updates(
                    cfg, loss_fn, model, ref, averager, opt, gen, loss_gen, shard, state, data, writer,
                    checkpoint_dir=run.checkpoint_dir,
                )  # fmt: skip
                StepLoop(
                    step=updates.step,
                    checkpoint=lambda n: checkpoint(),
                    emergency_checkpoint=lambda n: own_checkpoint(),
                    rewind=updates.rewind,
                    resume_hint=resume_hint,
                    where=lambda n, r=r: f"in round {r} at step {n}",
                    checkpoint_every=cfg.checkpoint_every,
                    stop_agreed=lambda n: shard.any(stop_requested()),
                    log=updates.log,
                    log_every=1,  # Updates.log keeps every 20th step of the run
                    desc=f"round {r}",
                    progress=cfg.progress and main,
                ).run(state["step"], cfg.steps_per_round)
                policy = ema if ema is not None else model
                policy.eval()
                outcomes = evaluate_episodes(policy, cfg, cfg.eval_episodes, eval_seed, shard)
                state["wall_s"] = wall0 + time.perf_counter() - t_start
                row = {"round": r, "env_steps": state["env_steps"], "wall_s": state["wall_s"], "pairs": data.pairs}
                row |= summary(outcomes, by_success)
                if best is not None:
                    best.offer(policy, summary(outcomes, by_success), state["total_steps"])
                if guard is not None:
                    val = guard.validate(policy)
                    row["deployed"] = guard.offer(policy, summary(outcomes, by_success), val, state["total_steps"])
                row["win_rate_vs_base"] = win_rate(outcomes, state["base_eval"], by_success)
                row["base"] = summary(state["base_eval"], by_success)
                log_eval(writer, row, row["win_rate_vs_base"], state["total_steps"])
                if main:
                    append_round(run.root / "evals.jsonl", row)
                key = "success_rate" if by_success else "return_mean"
                say(
                    f"round {r}: {key} {row[key]:.3f} (base {row['base'][key]:.3f}), "
                    f"return {row['return_mean']:.1f}, win rate vs base {row['win_rate_vs_base']:.2f}, "
                    f"{data.pairs} pairs, {state['env_steps']} env steps of rollouts",
                    flush=True,
                )
                if cfg.resync_reference:
                    ref.load_state_dict(policy.state_dict())
                elif cfg.loss == "seppo":  # also after the last round: `--resume --rounds N` may add more
                    if main:
                        reference.keep_round_policy(run.root, r, policy)
                    shard.barrier()
                    drawn = reference.draw(cfg.seed, r + 1)
                    what = reference.load_reference(ref, run.root, drawn, lambda: _base_policy(cfg, device))
                    say(f"round {r + 1}'s reference: {what}", flush=True)
                state["round"], state["step"] = r + 1, 0
                checkpoint()
        except RunInterrupted:
            raise
        except KeyboardInterrupt:  # a second Ctrl-C while collecting or evaluating
            own_checkpoint()
            raise RunInterrupted(
                f"interrupted in round {state['round']} at step {state['step']}; continue with: {resume_hint}"
            ) from None
        finally:
            writer.close()
    policy = ema if ema is not None else model
    if not all(torch.isfinite(t).all() for t in policy.state_dict().values()):
        raise TrainingError(
            f"the fine-tuned weights are not finite; lower --lr or --beta ({run.checkpoint_dir} is kept)"
        )
    data_files = [str(p) for p in cfg.prefs] + [
        str(prefs_dir / f"round_{r:03d}.hdf5") for r in range(cfg.rounds) if r or not given
    ]
    provenance = {
        "method": "dpo",
        "base": cfg.base,
        "base_provenance": policy.config.provenance,
        "loss": cfg.loss,
        "beta": cfg.beta,
        "bc_weight": cfg.bc_weight,
        "rounds": cfg.rounds,
        "steps_per_round": cfg.steps_per_round,
        "resync_reference": cfg.resync_reference,
        "data": data_files,
        "env_steps": state["env_steps"],
        "run": str(cfg.out),
    }
    if not main:
        return policy
    last = json.loads((run.root / "evals.jsonl").read_text().splitlines()[-1])
    record = {"processes": shard.world, "final": cfg.final, "policy_steps": state["total_steps"]}
    base = lambda: _base_policy(cfg, device)  # noqa: E731
    policy, final = choose_final(policy, last, record, best, guard, base, device, "policy_steps")
    if final.get("deployed") != "base":
        policy.config = replace(policy.config, provenance=provenance | {"gradient_steps": final["policy_steps"]})
    policy.save(run.policy_dir)
    atomic_write_text(run.root / "final_eval.json", json.dumps(final, indent=2))
    kept = "the base (no round beat it on the validation episodes)" if final.get("deployed") == "base" else ""
    print(f"policy saved to {run.policy_dir}" + (f": {kept}" if kept else ""), flush=True)
    return policy


@dataclass
class Updates:
    """One round's gradient steps on its pairs: the step function of the shared
    :class:`~dpft.base_policies.infra.step_loop.StepLoop`, and what it needs to redo a step."""

    cfg: DPOConfig
    loss_fn: Callable[..., tuple[torch.Tensor, dict[str, float]]]
    model: DenoisingPolicy
    ref: DenoisingPolicy
    averager: EMA | None
    """--ema-decay: the moving average of the weights, updated after every step."""
    opt: torch.optim.Optimizer
    gen: torch.Generator
    """Draws the batches of pairs (the same on every process)."""
    loss_gen: torch.Generator
    """Draws the denoising times and noise, and SePPO's reference samples."""
    shard: Shard
    state: dict[str, Any]
    """The run's counters (round, step, total_steps, ...), advanced here and checkpointed by the run."""
    data: PairData
    writer: Any
    """TensorBoard (a writer that drops everything on the processes other than the main one)."""
    checkpoint_dir: Path
    before: tuple[torch.Tensor, torch.Tensor] | None = None
    """The generators' states at the start of the step being taken."""

    def step(self, n: int) -> dict[str, float]:
        cfg, model, shard = self.cfg, self.model, self.shard
        self.before = (self.gen.get_state(), self.loss_gen.get_state())
        needs_chains = cfg.loss in NEEDS_CHAINS
        batch = self.data.sample(cfg.batch_pairs, cfg.chunks_per_pair, self.gen, shared_index=needs_chains)
        batch = prepare_batch(cfg.loss, self.ref, batch, self.loss_gen)
        batch = draw_times_noise(model, batch, self.loss_gen).part(shard.rank, shard.world)
        model.train()
        lcfg = LossConfig(cfg.beta, cfg.bc_weight, cfg.clip, cfg.noise_level, self.loss_gen)
        loss, info = self.loss_fn(model, self.ref, batch, lcfg)
        if shard.any(not torch.isfinite(loss).item()):  # all processes stop, not only the one that saw it
            raise TrainingError(
                f"the {cfg.loss} loss became non-finite at step {self.state['total_steps']}; lower --lr or --beta "
                f"(the last checkpoint in {self.checkpoint_dir} is kept)"
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        # the mean of the shares' gradients is the whole batch's gradient
        shard.mean_grads_([p for p in model.parameters() if p.requires_grad])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        self.opt.step()
        if self.averager is not None:
            self.averager.update(model, n)
        self.state["step"], self.state["total_steps"] = n + 1, self.state["total_steps"] + 1
        self.before = None  # the step is done: an interrupt from here on keeps the generators as they are
        return info

    def rewind(self) -> None:
        """A second Ctrl-C inside a step: put the generators back, so the resumed run redoes it exactly."""
        if self.before is not None:
            self.gen.set_state(self.before[0])
            self.loss_gen.set_state(self.before[1])

    def log(self, n: int, info: dict[str, float]) -> None:
        """Every 20th gradient step of the run (counted over rounds), the mean over the processes."""
        if self.state["total_steps"] % 20:
            return
        values = torch.tensor([float(v) for v in info.values()], dtype=torch.float64)
        self.shard.mean_([values])  # over every process's share of the batch
        for k, v in zip(info, values.tolist()):
            self.writer.add_scalar(f"train/{k}", v, self.state["total_steps"])


def _final_choice(
    cfg: DPOConfig, root: Path, steps: int, shard: Shard, by_success: bool, eval_seed: int, device: torch.device
) -> tuple[Guard | None, BestPolicy | None]:
    """What ``--final guarded`` / ``--final best`` keep, as for DSRL and residual runs, keyed by
    gradient steps; offers after ``steps`` are forgotten (a resumed run finds them again)."""

    def scored(episodes: int, seed: int) -> Callable[[DenoisingPolicy], dict[str, Any]]:
        return lambda p: summary(evaluate_episodes(p, cfg, episodes, seed, shard), by_success)

    best = BestPolicy(root) if cfg.final == "best" and shard.is_main else None
    if best is not None:
        best.forget_after(steps)
    guard = None
    if cfg.final == "guarded":
        guard = Guard(root, writes=shard.is_main)
        validate = scored(cfg.validation_episodes or cfg.eval_episodes, cfg.seed + VALIDATION_SEED_OFFSET)
        guard.start(_base_policy(cfg, device), validate, scored(cfg.eval_episodes, eval_seed), steps)
    return guard, best


class _NoWriter:
    """TensorBoard for the processes other than the main one: nothing is written."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def _silent(*args, **kwargs) -> None:
    pass


train_dpo.check_processes = check_processes  # type: ignore[attr-defined]  # the CLI checks before launching


def _round_data(
    cfg: DPOConfig, root: Path, given: list, r: int, model: DenoisingPolicy, state: dict, shard: Shard
) -> Prefs:
    """The pairs of rounds 0..r: given files for round 0 (when any), the rest collected with the
    policy of that round (each process its share of the rollouts) and written by the main process
    before training on them (a resumed run reads them back)."""
    files: list[tuple[Path, Prefs]] = list(given)
    for k in range(r + 1):
        if k == 0 and given:
            continue
        path = root / "prefs" / f"round_{k:03d}.hdf5"
        if shard.gather([path.exists()])[0]:  # the main process's view decides, for all of them
            files.append((path, read_prefs(path)))
            continue
        model.eval()
        t0 = time.perf_counter()
        prefs = collect_prefs(
            model,
            f"{cfg.base} (dpo round {k})",
            cfg,
            cfg,
            seed=cfg.seed * 100_003 + k * 10_007,
            round_=k,
            shard=shard,
        )
        if shard.is_main:
            write_prefs(path, prefs)
            s = prefs.stats()
            print(
                f"round {k}: collected {s['pairs']} pairs from {s['rollouts']} rollouts ({s['env_steps']} env steps, "
                f"rollout success {s['rollout_success']:.2f}) in {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
        shard.barrier()  # written: every process trains on the file's pairs, read back as on a resume
        files.append((path, read_prefs(path)))
    # counted from the files, so a run killed after writing a round's file still counts it
    state["env_steps"] = sum(p.stats()["env_steps"] for _, p in files)
    return merge(files) if len(files) > 1 else files[0][1]


def _checkpoint(folder: Path, model, ref, ema, opt, gen, loss_gen, state: dict) -> None:
    with atomic_dir(folder) as tmp:
        for name, m in (("model", model), ("ref", ref), ("ema", ema)):
            if m is not None:
                save_file(
                    {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()},
                    str(tmp / f"{name}.safetensors"),
                )
        save_state(
            tmp,
            {
                **state,
                "base_eval": [list(x) for x in state["base_eval"] or []] or None,
                "optimizer": opt.state_dict(),
                "gen": gen.get_state(),
                "loss_gen": loss_gen.get_state().cpu(),
            },
        )


GIVEN = "given_prefs.json"
"""The preference files a run trained on: their pairs, what was used, and the hashes of their bytes."""


def record_given(root: Path, given: list[tuple[Path, Prefs]], resume: bool, say: Callable[..., None]) -> None:
    """Say how many pairs of each ``--prefs`` file train (unlabelled pairs and ties do not), and keep
    what a person labelled: a copy of each labels file in ``OUT/given/`` and the hashes of every
    input in ``OUT/given_prefs.json``. A resumed run refuses files that changed since it started."""
    import hashlib
    from collections import Counter

    from dpft.finetune.dpo.prefs import index_path, labels_path

    rows = []
    for path, prefs in given:
        labels = Counter(p.label for p in prefs.pairs)
        used, by_person = labels["chosen"] + labels["rejected"], sum(p.source == "person" for p in prefs.pairs)
        files = [f for f in (path, index_path(path), labels_path(path)) if f.exists()]
        digests = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
        rows.append({"file": str(path), "pairs": len(prefs.pairs), "used": used, "labelled_by_person": by_person,
                     "unlabelled": labels[None], "ties": labels["tie"], "cant_tell": labels["unclear"],
                     "sha256": digests})  # fmt: skip
        say(
            f"prefs {path}: {used} of {len(prefs.pairs)} pairs train ({by_person} labelled by a person); "
            f"{labels[None]} unlabelled, {labels['tie']} tied and {labels['unclear']} can't-tell pairs are not used"
        )
    record = root / GIVEN
    if resume and record.exists():
        before = {r["file"]: r["sha256"] for r in read_json(record, "run record", list)}
        changed = [r["file"] for r in rows if before.get(r["file"], r["sha256"]) != r["sha256"]]
        if changed:
            raise ConfigError(
                f"{changed[0]} changed since this run started (its pairs or labels differ from {record}); "
                "resume with the files as they were, or start a new run"
            )
    for i, (path, _) in enumerate(given):
        if labels_path(path).exists():
            atomic_write_text(root / "given" / f"{i}-{labels_path(path).name}", labels_path(path).read_text())
    atomic_write_text(record, json.dumps(rows, indent=2))


def _load_checkpoint(folder: Path, model, ref, ema, opt, gen, loss_gen) -> dict:
    load_weights(model, folder, "model.safetensors")
    load_weights(ref, folder, "ref.safetensors")
    if ema is not None:
        load_weights(ema, folder, "ema.safetensors")
    s = load_state(folder)
    with interpreting(folder / "state.json", "training state", CheckpointError, RESTART):
        check_keys(s, dict.fromkeys(("round", "step", "total_steps", "env_steps"), int), folder / "state.json",
                   "training state", CheckpointError)  # fmt: skip
        opt.load_state_dict(s.pop("optimizer"))
        gen.set_state(s.pop("gen"))
        loss_gen.set_state(s.pop("loss_gen"))
        s["base_eval"] = [(bool(a), float(b)) for a, b in s["base_eval"]] if s.get("base_eval") else None
        s["wall_s"] = float(s.get("wall_s", 0.0))
        return s
