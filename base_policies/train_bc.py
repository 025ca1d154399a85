"""Behaviour-cloning pre-training of a diffusion or flow policy.

AdamW, cosine learning rate with linear warm-up, gradient clipping, EMA weights (the saved
policy is the EMA copy), a validation loss on held-out episodes, TensorBoard, periodic
atomic checkpoints and ``--resume``. Runs unchanged under ``accelerate launch`` for
data-parallel training: each process draws its own batches and gradients are averaged.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from safetensors.torch import save_file

from dpft.base_policies.config import ArchConfig, PolicyConfig, validate_arch
from dpft.base_policies.data import Demonstrations, load_demonstrations, make_windows, split_episodes
from dpft.base_policies.data.env_args import read_env_info
from dpft.base_policies.data.windows import Windows
from dpft.base_policies.ema import EMA
from dpft.base_policies.infra.device import check_device_spec, resolve_device
from dpft.base_policies.infra.divergence import DivergenceGuard
from dpft.base_policies.infra.errors import CheckpointError, ConfigError, TrainingError
from dpft.base_policies.infra.files import check_keys, interpreting
from dpft.base_policies.infra.interrupt import graceful_stop, stop_requested
from dpft.base_policies.infra.ranges import check_ranges
from dpft.base_policies.infra.registry import all_cores, multi_process
from dpft.base_policies.infra.run_folder import RunFolder, open_run
from dpft.base_policies.infra.state_io import RESTART, atomic_dir, load_state, rng_state, save_state, set_rng_state
from dpft.base_policies.infra.step_loop import StepLoop
from dpft.base_policies.policy import DenoisingPolicy, policy_type, policy_type_names
from dpft.base_policies.posterior import PosteriorTargets, ensemble_spread


@dataclass
class TrainBCConfig:
    """Train a base policy by behaviour cloning on a demonstration file."""

    RANGES: ClassVar[dict[str, str]] = {
        "steps": ">= 1",
        "batch_size": ">= 1",
        "lr": "(0, 1]",
        "weight_decay": ">= 0",
        "warmup_steps": ">= 0",
        "grad_clip": "> 0",
        "ema_decay": "[0, 1)",
        "val_fraction": "[0, 1)",
        "val_every": ">= 1",
        "checkpoint_every": ">= 1",
        "log_every": ">= 1",
        "posterior_members": ">= 0",
        "posterior_scale": ">= 0",
        "posterior_steps": ">= 1",
        "seed": "[0, 1000000000]",
    }
    """Declared range of each numeric setting (dpft.base_policies.infra.ranges)."""

    dataset: Path | None = None
    """Demonstrations: robomimic-layout .hdf5, .npz file/folder, or a local Minari dataset folder."""
    out: Path = Path("runs/bc")
    """Run folder (config, TensorBoard, checkpoint, final policy in OUT/policy)."""
    policy: str = "diffusion"
    """Policy type: diffusion or flow."""
    backbone: str = "mlp"
    """Denoiser backbone: mlp (residual MLP) or unet (1-D temporal conv U-Net with FiLM)."""
    arch: ArchConfig = field(default_factory=ArchConfig)
    """Horizons, network sizes and sampler settings."""
    steps: int = 20_000
    """Total optimiser steps."""
    batch_size: int = 256
    """Global batch size (split across processes under accelerate)."""
    lr: float = 3e-4
    """Peak learning rate."""
    weight_decay: float = 1e-6
    """AdamW weight decay."""
    warmup_steps: int = 500
    """Linear warm-up steps before the cosine decay."""
    grad_clip: float = 1.0
    """Gradient-norm clipping threshold."""
    ema_decay: float = 0.999
    """Maximum EMA decay of the saved weights."""
    val_fraction: float = 0.1
    """Fraction of episodes held out for the validation loss."""
    val_every: int = 1000
    """Steps between validation losses."""
    checkpoint_every: int = 2000
    """Steps between atomic training checkpoints."""
    log_every: int = 100
    """Steps between TensorBoard scalars."""
    obs_keys: tuple[str, ...] = ()
    """For HDF5 files whose obs is a group: keys to concatenate, in the order the environment emits them
    (default: the order in the file's env_args "obs_keys"; required for a group of several keys otherwise)."""
    posterior_members: int = 0
    """PostBC (arXiv 2512.16911): train this many bootstrapped regressors first and widen each BC
    target by their spread at its window, so the base covers the demonstrator's actions instead of
    collapsing onto their mean (easier to fine-tune); 0 = plain BC."""
    posterior_scale: float = 1.0
    """PostBC: the noise added to a target is this times the ensemble's spread."""
    posterior_steps: int = 2000
    """PostBC: optimiser steps per ensemble member."""
    filter_key: str | None = None
    """Use only the demos listed in mask/<filter_key> of a robomimic HDF5 file, as robomimic's --filter_key."""
    task: str | None = None
    """Task id recorded in the policy (default: the "task" in the dataset's env_args; never guessed)."""
    seed: int = 0
    """Random seed."""
    device: str = "auto"
    """auto (every process on a GPU when there are GPUs), cpu, or cuda."""
    resume: bool = False
    """Continue the run in --out from its last checkpoint, with its saved config."""
    overwrite: bool = False
    """Replace the run already in --out (its checkpoint, policy, logs); without it that is an error."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        check_ranges(self)
        cls = policy_type(self.policy)
        if cls is None or not issubclass(cls, DenoisingPolicy):
            trainable = [k for k in policy_type_names() if issubclass(policy_type(k) or object, DenoisingPolicy)]
            raise ConfigError(f"unknown --policy {self.policy!r}; choose one of {trainable}")
        from dpft.base_policies.backbones import BACKBONES

        if self.backbone not in BACKBONES:
            raise ConfigError(f"unknown --backbone {self.backbone!r}; choose one of {sorted(BACKBONES)}")
        validate_arch(self.arch, self.backbone)
        check_device_spec(self.device)
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("--steps and --batch-size must be >= 1")
        if self.posterior_members == 1 or self.posterior_members < 0 or self.posterior_scale < 0:
            raise ConfigError("--posterior-members must be 0 (plain BC) or >= 2, and --posterior-scale >= 0")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"--val-fraction ({self.val_fraction}) must be in [0, 1)")


def lr_lambda(warmup: int, total: int):
    """Linear warm-up to 1, then cosine decay to 0 at ``total``."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))

    return f


class BatchSampler:
    """Draws batches from in-memory windows without replacement within an epoch.

    Faster than a DataLoader for state data (one gather per batch instead of per item);
    each process seeds its own generator so data-parallel ranks see different batches.
    """

    def __init__(self, windows: Windows, batch_size: int, seed: int, targets: PosteriorTargets | None = None) -> None:
        self.windows, self.batch_size, self.targets = windows, min(batch_size, len(windows)), targets
        self.gen = torch.Generator().manual_seed(seed)
        self._perm, self._pos = torch.randperm(len(windows), generator=self.gen), 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._pos + self.batch_size > len(self._perm):
            self._perm, self._pos = torch.randperm(len(self.windows), generator=self.gen), 0
        idx = self._perm[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        actions = self.windows.actions[idx]
        if self.targets is not None:  # PostBC: a fresh draw around the demonstrated chunk
            actions = self.targets.sample(idx, actions, self.gen)
        return self.windows.obs[idx], actions

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "perm": self._perm, "pos": self._pos}

    def load_state_dict(self, s: dict) -> None:
        self.gen.set_state(s["gen"])
        self._perm, self._pos = s["perm"], int(s["pos"])


@torch.no_grad()
def validation_loss(policy: DenoisingPolicy, windows: Windows, max_windows: int = 4096) -> float:
    """Mean denoising loss with fixed times and noise, so values are comparable over training."""
    gen = torch.Generator().manual_seed(1234)
    n = min(len(windows), max_windows)
    idx = torch.randperm(len(windows), generator=gen)[:n]
    obs, act = windows.obs[idx].to(policy.device), windows.actions[idx].to(policy.device)
    t = policy.sample_times(n, generator=gen)
    noise = torch.randn(act.shape, generator=gen).to(policy.device)
    return policy.denoising_loss(obs, act, t, noise).mean().item()


def build_policy(cfg: TrainBCConfig, demos: Demonstrations) -> DenoisingPolicy:
    """A fresh policy for ``demos``: sizes and observation keys from the data; task and action
    bounds from the file's env_args (see :mod:`~dpft.base_policies.data.env_args`), ``--task`` first."""
    env = read_env_info(demos.attrs.get("env_args"), str(cfg.dataset), demos.action_dim)
    pcfg = PolicyConfig(
        type=cfg.policy,
        backbone=cfg.backbone,
        obs_dim=demos.obs_dim,
        action_dim=demos.action_dim,
        arch=cfg.arch,
        action_low=env.action_low,
        action_high=env.action_high,
        task=cfg.task or env.task,
        obs_keys=demos.obs_keys,
    )
    return policy_type(cfg.policy)(pcfg)


def diverged(cfg: TrainBCConfig, run: RunFolder, bad_step: int, saved_step: int | None) -> TrainingError:
    kept = f"{run.checkpoint_dir} still holds step {saved_step}" if saved_step is not None else "no checkpoint exists"
    return TrainingError(
        f"training diverged: the loss was NaN or inf at step {bad_step}; stopped without saving anything after it "
        f"({kept}). Train again with a lower --lr (now {cfg.lr:g}; try {cfg.lr / 10:g}) in a new --out"
    )


@multi_process
@all_cores
def train_bc(cfg: TrainBCConfig) -> Path:
    """Run BC training; returns the final policy folder."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=resolve_device(cfg.device).type == "cpu")
    main = accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes
    cfg, run = open_run(cfg, TrainBCConfig, main=main)
    if cfg.dataset is None:
        raise ConfigError("--dataset is required (a .hdf5, .npz or Minari dataset)")
    torch.manual_seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)

    demos = load_demonstrations(cfg.dataset, cfg.obs_keys or None, cfg.filter_key)
    train_eps, val_eps = split_episodes(demos.episodes, cfg.val_fraction, cfg.seed)
    train_w = make_windows(train_eps, cfg.arch.obs_horizon, cfg.arch.pred_horizon)
    val_w = make_windows(val_eps, cfg.arch.obs_horizon, cfg.arch.pred_horizon) if val_eps else None

    policy = build_policy(cfg, demos)
    policy.fit_normalizers(
        torch.from_numpy(np.concatenate([e.obs for e in train_eps])),
        torch.from_numpy(np.concatenate([e.actions for e in train_eps])),
    )
    policy.to(accelerator.device)  # before the EMA copy and the optimizer, so all three share a device
    ema = EMA(policy, cfg.ema_decay)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, cfg.steps))
    targets = None
    if cfg.posterior_members:  # the same on every process and on a resume (seeded, CPU)
        episode_of = torch.repeat_interleave(torch.arange(len(train_eps)), torch.tensor([len(e) for e in train_eps]))
        targets = ensemble_spread(
            train_w, episode_of, cfg.posterior_members, cfg.posterior_steps, seed=cfg.seed, scale=cfg.posterior_scale
        )
    sampler = BatchSampler(train_w, max(1, cfg.batch_size // world), cfg.seed * 1000 + rank, targets)

    step, saved = 0, None
    if cfg.resume and run.has_checkpoint():
        step = saved = _load_checkpoint(run.checkpoint_dir, policy, ema, opt, sched, sampler, restore_rng=rank == 0)
    if main:
        run.write_config(cfg)
        print(
            f"train-bc: {len(demos.episodes)} episodes ({len(train_w)} training windows), {cfg.policy}/{cfg.backbone}, "
            f"{world} processes, step {step} -> {cfg.steps}, run folder {cfg.out}",
            flush=True,
        )
        if targets is not None:
            print(
                f"train-bc: PostBC targets from {cfg.posterior_members} bootstrapped regressors: spread "
                f"{targets.spread.mean():.3f} on average (action units), x{cfg.posterior_scale:g}",
                flush=True,
            )
        if policy.config.task is None:
            print("train-bc: the dataset's env_args records no 'task'; pass --task to record it", flush=True)
    model, opt = accelerator.prepare(policy, opt)
    guard = DivergenceGuard(accelerator.device)

    def save_checkpoint(n: int) -> None:
        """Checkpoint after ``n`` steps unless training diverged before it (then raise, keeping the last good one)."""
        nonlocal saved
        bad = guard.first_bad_step(accelerator)
        if bad is not None:
            raise diverged(cfg, run, bad, saved)
        _checkpoint(accelerator, run, policy, ema, opt, sched, sampler, n)
        saved = n

    def stop_agreed(n: int) -> bool:
        """A stop asked of any process (SIGTERM, Ctrl-C), agreed by all; with several processes
        asked every ``--log-every`` steps, so the check costs one collective per log line."""
        if world == 1:
            return stop_requested()
        if n % cfg.log_every:
            return False
        flag = torch.tensor([float(stop_requested())], device=accelerator.device)
        return accelerator.reduce(flag, "sum").item() > 0

    def bc_step(n: int) -> dict[str, torch.Tensor]:
        obs, act = sampler.next()
        model.train()
        loss, _ = model(obs.to(accelerator.device), act.to(accelerator.device))
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        guard.update(n + 1, loss, grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        ema.update(accelerator.unwrap_model(model), n)
        return {"loss": loss, "grad_norm": grad_norm}

    writer = run.writer(cfg) if main else None
    t0, s0 = time.perf_counter(), step

    def log(n: int, scalars) -> None:
        if main:
            writer.add_scalar("train/loss", scalars["loss"].item(), n)
            writer.add_scalar("train/grad_norm", float(scalars["grad_norm"]), n)
            writer.add_scalar("train/lr", sched.get_last_lr()[0], n)
            writer.add_scalar("time/steps_per_s", (n - s0) / (time.perf_counter() - t0), n)

    def after_step(n: int) -> None:
        if main and val_w is not None and (n % cfg.val_every == 0 or n == cfg.steps):
            writer.add_scalar("val/loss", validation_loss(ema.shadow, val_w), n)
        if n % cfg.log_every == 0 and n % cfg.checkpoint_every:  # a checkpoint step checks for itself
            bad = guard.first_bad_step(accelerator)
            if bad is not None:
                raise diverged(cfg, run, bad, saved)

    def own_checkpoint(n: int) -> None:  # a second Ctrl-C: no collective, the other processes may be stopping too
        bad = guard.first_bad_step()  # this process's own record
        if bad is not None:
            raise diverged(cfg, run, bad, saved)
        if main:
            _write_checkpoint(run, policy, ema, opt, sched, sampler, n)

    loop = StepLoop(
        step=bc_step,
        checkpoint=save_checkpoint,
        emergency_checkpoint=own_checkpoint,
        resume_hint=f"dpft train-bc --out {cfg.out} --resume",
        checkpoint_every=cfg.checkpoint_every,
        stop_agreed=stop_agreed,
        log=log,
        log_every=cfg.log_every,
        after_step=after_step,
        desc="train-bc",
        progress=main and cfg.progress,
    )
    with graceful_stop():
        try:
            step = loop.run(step, cfg.steps)
        finally:
            if writer is not None:
                writer.close()
    save_checkpoint(step)
    if main:
        ema.shadow.save(run.policy_dir)
    accelerator.wait_for_everyone()
    return run.policy_dir


def _checkpoint(accelerator, run: RunFolder, policy, ema, opt, sched, sampler, step: int) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_checkpoint(run, policy, ema, opt, sched, sampler, step)


def _write_checkpoint(run: RunFolder, policy, ema, opt, sched, sampler, step: int) -> None:
    state = {
        "step": step,
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "sampler": sampler.state_dict(),
        "rng": rng_state(),
    }
    with atomic_dir(run.checkpoint_dir) as tmp:
        save_file({k: v.contiguous() for k, v in policy.state_dict().items()}, str(tmp / "model.safetensors"))
        save_file({k: v.contiguous() for k, v in ema.shadow.state_dict().items()}, str(tmp / "ema.safetensors"))
        save_state(tmp, state)


def _load_checkpoint(folder: Path, policy, ema, opt, sched, sampler, restore_rng: bool) -> int:
    from dpft.base_policies.checkpoint import load_weights

    load_weights(policy, folder, "model.safetensors")
    load_weights(ema.shadow, folder, "ema.safetensors")
    state = load_state(folder)
    with interpreting(folder / "state.json", "training state", CheckpointError, RESTART):
        check_keys(state, {"step": int}, folder / "state.json", "training state", CheckpointError)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if restore_rng:
            sampler.load_state_dict(state["sampler"])
            set_rng_state(state["rng"])
        return int(state["step"])
