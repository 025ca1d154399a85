"""Build small LeRobot diffusion policies with seeded random weights and record LeRobot's own
outputs for them, as references dpft's LeRobot reader is tested against.

Runs inside a LeRobot environment (``tests/lerobot/make_env.sh``), never in dpft's::

    .venv-lerobot-0.4.4/bin/python tests/lerobot/make_references.py OUT_DIR

For each variant it writes ``OUT_DIR/<variant>/`` (the folder LeRobot's ``save_pretrained``
writes, plus its processor files on LeRobot 0.4) and ``OUT_DIR/<variant>.expected.safetensors``:

- ``obs`` ``[B, n_obs_steps, state + env_state]``: observation histories, oldest first;
- ``noise`` ``[B, horizon, A]`` and ``chunk`` ``[B, n_action_steps, A]``: LeRobot's
  ``predict_action_chunk`` for that initial noise (env units), after filling its observation
  queue with the history;
- DDPM variants: ``chunk`` is LeRobot's random DDPM chunk, its step noise drawn from the global
  RNG seeded ``ddpm_seed``; ``ddim_chunk`` is the same call with LeRobot's scheduler swapped for
  diffusers' DDIM on the same settings (dpft's deterministic map for a DDPM policy; not for
  sigmoid betas, which diffusers' DDIM lacks);
- ``reset_obs`` ``[B, D]`` and ``reset_chunk``: the chunk at an episode's first step (LeRobot's
  queue filled with copies of that one observation);
- ``loss_actions`` ``[B, horizon, A]``, ``loss_seed`` and ``loss``: LeRobot's training loss on
  that batch, with its noise and steps drawn after ``torch.manual_seed(loss_seed)``.

The committed references in ``tests/data/lerobot/`` were made with this script (see the README
there); ``tests/test_lerobot_live.py`` runs it afresh when a LeRobot environment exists.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lerobot
import torch
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
from lerobot.policies.utils import populate_queues
from safetensors.torch import save_file

VERSION = tuple(int(v) for v in lerobot.__version__.split(".")[:2])
NEW = VERSION >= (0, 4)
if NEW:  # the processor pipelines (and the normaliser outside the model) came with LeRobot 0.4
    from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors

STATE, ENV, ACTION = "observation.state", "observation.environment_state", "action"
BATCH = 3

# name -> (state dim, env-state dim, action dim, DiffusionConfig overrides)
VARIANTS = {
    "ddim_eps_cosine": (4, 3, 2, dict(noise_scheduler_type="DDIM", num_inference_steps=5)),
    "ddim_sample_linear": (5, 2, 3, dict(
        noise_scheduler_type="DDIM", prediction_type="sample", beta_schedule="linear", clip_sample=False,
        n_obs_steps=1, horizon=8, n_action_steps=8, num_inference_steps=10, use_film_scale_modulation=False,
        normalization_mapping={"STATE": NormalizationMode.MEAN_STD, "ENV": NormalizationMode.MEAN_STD,
                               "ACTION": NormalizationMode.MIN_MAX})),
    "ddpm_eps_scaled": (4, 3, 2, dict(
        noise_scheduler_type="DDPM", beta_schedule="scaled_linear", num_train_timesteps=20,
        num_inference_steps=None, clip_sample_range=1.5, n_obs_steps=3, horizon=16, n_action_steps=6,
        down_dims=(16, 32, 32), normalization_mapping={"STATE": NormalizationMode.MIN_MAX,
        "ENV": NormalizationMode.IDENTITY, "ACTION": NormalizationMode.MEAN_STD})),
    "ddpm_strided_sigmoid": (3, 2, 2, dict(
        noise_scheduler_type="DDPM", beta_schedule="sigmoid", num_train_timesteps=30, num_inference_steps=7,
        prediction_type="sample", clip_sample=False, normalization_mapping={
            "STATE": getattr(NormalizationMode, "QUANTILES", None),  # quantiles: LeRobot 0.4 only
            "ENV": NormalizationMode.MEAN_STD, "ACTION": getattr(NormalizationMode, "QUANTILE10", None)})),
    # fits the test suite's toy tasks (2-D observation, 2-D action): for dpft eval / finetune / export
    "toy_ddim": (1, 1, 2, dict(noise_scheduler_type="DDIM", num_inference_steps=5)),
}  # fmt: skip
SMALL = dict(down_dims=(16, 32), horizon=8, n_action_steps=4, diffusion_step_embed_dim=16, n_groups=4, device="cpu")


def build(name: str, seed: int) -> tuple[DiffusionPolicy, dict, dict]:
    s, e, a, overrides = VARIANTS[name]
    torch.manual_seed(seed)
    features = {STATE: PolicyFeature(FeatureType.STATE, (s,)), ENV: PolicyFeature(FeatureType.ENV, (e,))}
    config = DiffusionConfig(
        input_features=features, output_features={ACTION: PolicyFeature(FeatureType.ACTION, (a,))},
        **{**SMALL, **overrides},
    )  # fmt: skip
    stats = {}
    for key, dim in ((STATE, s), (ENV, e), (ACTION, a)):
        low = torch.randn(dim) - 2
        high = low + 1 + 3 * torch.rand(dim)
        stats[key] = {"min": low, "max": high, "mean": torch.randn(dim), "std": 0.5 + torch.rand(dim),
                      "q01": low + 0.1, "q99": high - 0.1, "q10": low + 0.3, "q90": high - 0.3}  # fmt: skip
    stats[STATE]["max"][0] = stats[STATE]["min"][0]  # a constant feature: LeRobot's zero-range rule
    policy = DiffusionPolicy(config, dataset_stats=stats) if not NEW else DiffusionPolicy(config)
    policy.eval()
    return policy, config, stats


def normalizers(policy, config, stats):
    """(normalise a batch, unnormalise actions) as the saved policy does."""
    if NEW:
        pre, post = make_diffusion_pre_post_processors(config, stats)
        # the pipeline returns every transition key, with None for those it was not given (action)
        return pre, post, (lambda batch: {k: v for k, v in pre(batch).items() if k in batch}), post
    return None, None, policy.normalize_inputs, (lambda actions: policy.unnormalize_outputs({ACTION: actions})[ACTION])


def chunks(policy, config, normalize, unnormalize, obs, noise):
    """LeRobot's chunk for each history row, after filling the observation queue with it."""
    s = config.input_features[STATE].shape[0]
    policy.reset()
    for k in range(obs.shape[1]):
        batch = normalize({STATE: obs[:, k, :s], ENV: obs[:, k, s:]})
        policy._queues = populate_queues(policy._queues, batch)
    if NEW:
        return unnormalize(policy.predict_action_chunk(batch, noise=noise))
    torch.manual_seed(1234)  # LeRobot 0.3 draws the initial noise itself: make it the recorded one
    assert torch.equal(torch.randn(noise.shape), noise)
    torch.manual_seed(1234)
    return policy.predict_action_chunk(batch)


def record(name: str, out: Path, seed: int) -> None:
    policy, config, stats = build(name, seed)
    pre, post, normalize, unnormalize = normalizers(policy, config, stats)
    folder = out / name
    policy.save_pretrained(folder)
    if NEW:
        pre.save_pretrained(folder)
        post.save_pretrained(folder)
    s, e, a, _ = VARIANTS[name]
    g = torch.Generator().manual_seed(seed + 1)
    obs = torch.randn(BATCH, config.n_obs_steps, s + e, generator=g) * 2
    obs[..., 0] = stats[STATE]["min"][0]  # the constant feature is constant in the data too
    if NEW:
        noise = torch.randn(BATCH, config.horizon, a, generator=g)
    else:
        torch.manual_seed(1234)
        noise = torch.randn(BATCH, config.horizon, a)
    expected = {"obs": obs, "noise": noise}
    ddpm_seed = 4321
    torch.manual_seed(ddpm_seed)  # DDPM steps draw their noise from the global RNG
    expected["chunk"] = chunks(policy, config, normalize, unnormalize, obs, noise)
    # the first decision of an episode: LeRobot's queue filled with copies of one observation
    expected["reset_obs"] = obs[:, -1].clone()
    torch.manual_seed(ddpm_seed)
    expected["reset_chunk"] = chunks(policy, config, normalize, unnormalize, obs[:, -1:], noise)
    meta = {"lerobot": lerobot.__version__, "variant": name, "seed": seed, "batch": BATCH}
    meta["scheduler"] = config.noise_scheduler_type
    if config.noise_scheduler_type == "DDPM":
        meta["ddpm_seed"] = ddpm_seed
        if not NEW:
            raise SystemExit("DDPM references need LeRobot 0.4 (0.3 draws the initial and step noise from one RNG)")
        ddpm = policy.diffusion.noise_scheduler
        settings = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "clip_sample",
                    "clip_sample_range", "prediction_type")  # fmt: skip
        if ddpm.config["beta_schedule"] != "sigmoid":  # diffusers' DDIM has no sigmoid betas
            policy.diffusion.noise_scheduler = DDIMScheduler(**{k: ddpm.config[k] for k in settings})
            expected["ddim_chunk"] = chunks(policy, config, normalize, unnormalize, obs, noise)
            policy.diffusion.noise_scheduler = ddpm
    actions = torch.randn(BATCH, config.horizon, a, generator=g)
    raw = {
        STATE: obs[:, :, :s],
        ENV: obs[:, :, s:],
        ACTION: actions,
        "action_is_pad": torch.zeros(BATCH, config.horizon, dtype=torch.bool),
    }
    batch = pre(raw) if NEW else policy.normalize_targets(policy.normalize_inputs(raw))
    loss_seed = 99
    torch.manual_seed(loss_seed)
    loss = policy.diffusion.compute_loss(batch)
    expected |= {"loss_actions": actions, "loss": loss.detach().reshape(1)}
    meta["loss_seed"] = loss_seed
    save_file({k: v.contiguous() for k, v in expected.items()}, str(out / f"{name}.expected.safetensors"),
              metadata={k: json.dumps(v) for k, v in meta.items()})  # fmt: skip


def main() -> None:
    out = Path(sys.argv[1])
    names = sys.argv[2:] or [n for n in VARIANTS if NEW or not n.startswith("ddpm")]  # DDPM, quantiles: 0.4
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        record(name, out, seed=list(VARIANTS).index(name))
        print(f"lerobot {lerobot.__version__}: wrote {out / name}")


if __name__ == "__main__":
    main()
