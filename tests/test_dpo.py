"""Preference fine-tuning: the losses, the pair data, and a run that must move a mode."""

import copy
import itertools
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_policy
from safetensors.torch import load_file
from synthetic import bimodal_episodes, obstacle_x

from dpft.base_policies import ArchConfig, ConfigError, load_policy
from dpft.base_policies.checkpoint import load_weights
from dpft.base_policies.data import write_robomimic_hdf5
from dpft.base_policies.infra.interrupt import RunInterrupted, request_stop
from dpft.base_policies.train_bc import TrainBCConfig, train_bc
from dpft.envs.config import EnvConfig
from dpft.finetune.commands import cli
from dpft.finetune.common.distributed import Shard
from dpft.finetune.dpo import reference
from dpft.finetune.dpo import train as dpo_train
from dpft.finetune.dpo.losses import LossConfig, PairBatch, d3po, diffusion_dpo, get_loss, prepare_batch, seppo
from dpft.finetune.dpo.pair_data import PairData
from dpft.finetune.dpo.pairs_collect import PairsConfig, collect_prefs
from dpft.finetune.dpo.prefs import (
    PrefsError,
    append_label,
    labels_path,
    merge,
    read_labels,
    read_prefs,
    write_prefs,
)
from dpft.finetune.dpo.sampling import Slot, group_noise
from dpft.finetune.dpo.train import DPOConfig, train_dpo

TASK = "toy_envs:Obstacle-v0"


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A diffusion policy that passes the obstacle on either side about equally often."""
    d = tmp_path_factory.mktemp("base")
    write_robomimic_hdf5(d / "demos.hdf5", bimodal_episodes(300, left_fraction=0.5), {"task": TASK})
    arch = ArchConfig(obs_horizon=1, pred_horizon=8, action_horizon=8, hidden_dim=128, num_blocks=2)
    cfg = TrainBCConfig(
        dataset=d / "demos.hdf5", out=d / "bc", arch=arch, steps=1500, lr=1e-3, warmup_steps=50,
        checkpoint_every=10**9, progress=False,
    )  # fmt: skip
    train_bc(cfg)
    return d / "bc"


def right_share(policy, n: int = 400) -> float:
    """Share of chunks that pass the obstacle on the right (the side that succeeds)."""
    g = torch.Generator().manual_seed(5)
    return float((obstacle_x(policy.predict_chunk(torch.zeros(n, 1, 2), generator=g).numpy()) > 0).mean())


def quick(tmp_path, base_dir, **kw) -> DPOConfig:
    args = dict(base=str(base_dir), task=TASK, out=tmp_path / "dpo", rounds=2, states=32, streams=4)
    args |= dict(steps_per_round=200, eval_episodes=50, progress=False, beta=2000.0, lr=1e-4)  # a small, clean task
    args |= dict(final="last")  # these tests look at what training did; --final has its own test
    # rollout pairs of N(0, I) streams, as before the preset chose the recipe (its test: test_presets.py)
    args |= dict(loss="diffusion-dpo", chunk_states=0, chunk_streams=2, noise_scales=[1.0], pairing="all")
    return DPOConfig(**{**args, **kw})


@pytest.mark.slow
def test_dpo_moves_the_mode_and_keeps_the_reference(tmp_path, base_dir):
    base = load_policy(base_dir)
    before = right_share(base)
    assert 0.35 <= before <= 0.65
    policy = train_dpo(quick(tmp_path, base_dir))
    assert right_share(policy) >= 0.9
    # the reference is the base, bit for bit: its weights and its chunks
    ref = load_policy(base_dir)
    load_weights(ref, tmp_path / "dpo" / "checkpoint", "ref.safetensors")
    obs, noise = torch.randn(64, 1, 2), torch.randn(64, 8, 2)
    assert torch.equal(ref.predict_chunk(obs, noise), base.predict_chunk(obs, noise))
    # the artifact is an ordinary policy folder that says where it came from
    saved = load_policy(tmp_path / "dpo")
    assert saved.type_name == "diffusion" and right_share(saved) >= 0.9
    prov = json.loads((tmp_path / "dpo" / "policy" / "config.json").read_text())["provenance"]
    assert prov["loss"] == "diffusion-dpo" and prov["rounds"] == 2 and len(prov["data"]) == 2
    rounds = [json.loads(x) for x in (tmp_path / "dpo" / "evals.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [-1, 0, 1] and rounds[-1]["win_rate_vs_base"] > 0.5
    assert rounds[-1]["env_steps"] == 2 * 32 * 4 * 8  # two rounds of 32 start states x 4 streams x 8 steps
    assert len(list((tmp_path / "dpo" / "tb").iterdir())) > 0


@pytest.mark.slow
def test_d3po_moves_the_mode(tmp_path, base_dir):
    policy = train_dpo(quick(tmp_path, base_dir, loss="d3po", sampler="stochastic", beta=10.0))
    assert right_share(policy) >= 0.75


def batch_from(obs_w, chunk_w, obs_l, chunk_l) -> PairBatch:
    n = len(obs_w)
    return PairBatch(obs_w, chunk_w, obs_l, chunk_l, torch.arange(n), n)


@pytest.mark.parametrize("kind", ["diffusion", "flow"])
def test_diffusion_dpo_is_log2_at_start_and_its_gradient_prefers_the_chosen(kind):
    model = tiny_policy(kind, obs_dim=3, action_dim=2)
    model.fit_normalizers(torch.randn(100, 3), torch.rand(100, 2) * 2 - 1)
    ref = tiny_policy(kind, obs_dim=3, action_dim=2)
    ref.load_state_dict(model.state_dict())
    b = batch_from(torch.randn(16, 3), torch.rand(16, 8, 2) * 2 - 1, torch.randn(16, 3), torch.rand(16, 8, 2) * 2 - 1)
    cfg = LossConfig(beta=100.0, bc_weight=0.0, clip=0.2, noise_level=None, generator=torch.Generator().manual_seed(0))
    loss, info = diffusion_dpo(model, ref, b, cfg)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)

    def gap() -> float:  # chosen minus rejected denoising error, on fixed times and noise
        g = torch.Generator().manual_seed(1)
        t, noise = model.sample_times(16, g), torch.randn(16, 8, 2, generator=g)
        with torch.no_grad():
            e_w = model.denoising_loss(b.obs_w, b.chunk_w, t, noise)
            return (e_w - model.denoising_loss(b.obs_l, b.chunk_l, t, noise)).mean().item()

    before = gap()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    for _ in range(5):
        cfg.generator = torch.Generator().manual_seed(1)  # the times and noise gap() measures on
        opt.zero_grad()
        diffusion_dpo(model, ref, b, cfg)[0].backward()
        opt.step()
    assert gap() < before


def test_d3po_log_probs_match_a_direct_gaussian_computation():
    model = tiny_policy("diffusion", obs_dim=3, action_dim=2)
    obs = torch.randn(4, 3)
    g = torch.Generator().manual_seed(0)
    noise, steps = torch.randn(4, 8, 2, generator=g), torch.randn(4, len(model.timesteps), 8, 2, generator=g)
    _, chain, _ = model.sample_chain(obs, noise, steps)
    lp = model.chain_log_prob(obs, chain)
    cond = model.condition(obs)
    for k, t in enumerate(model.timesteps):
        mean, std = model.step_mean_std(cond, chain[:, k], t.expand(4), model.default_noise_level)
        direct = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(chain[:, k + 1]).sum((1, 2))
        assert torch.allclose(lp[:, k], direct, atol=1e-3)
    ref = tiny_policy("diffusion", obs_dim=3, action_dim=2)
    ref.load_state_dict(model.state_dict())
    b = batch_from(obs, chain[:, -1], obs, chain[:, -1])
    b.chain_w, b.chain_l = chain, chain.flip(0)
    loss, _ = d3po(model, ref, b, LossConfig(beta=10.0, bc_weight=0.0, clip=0.2, noise_level=None))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)  # model = reference: every ratio is 1


@pytest.fixture(scope="module")
def prefs_file(tmp_path_factory, base_dir):
    d = tmp_path_factory.mktemp("prefs")
    policy = load_policy(base_dir)
    cfg = PairsConfig(states=6, streams=4, chunk_states=0, sampler="stochastic")
    prefs = collect_prefs(policy, str(base_dir), EnvConfig(task=TASK, envs=8), cfg, seed=3)
    write_prefs(d / "p.hdf5", prefs)
    return d / "p.hdf5", prefs


def test_pair_collection_is_reproducible_and_the_file_round_trips(prefs_file, base_dir):
    path, prefs = prefs_file
    again = collect_prefs(
        load_policy(base_dir), str(base_dir), EnvConfig(task=TASK, envs=5),
        PairsConfig(states=6, streams=4, sampler="stochastic"), seed=3,
    )  # fmt: skip
    assert [(p.chosen, p.rejected, p.margin) for p in again.pairs] == [
        (p.chosen, p.rejected, p.margin) for p in prefs.pairs
    ]
    back = read_prefs(path)
    assert back.pairs == prefs.pairs and back.meta["task"] == TASK and back.meta["sampler"] == "stochastic"
    for rid, r in prefs.rollouts.items():
        assert np.array_equal(back.rollouts[rid].chunks, r.chunks)
        assert np.array_equal(back.rollouts[rid].chains, r.chains)
    # the members of a group share each decision's initial noise (the chain's first state) in D3PO mode
    group0 = [r for r in back.rollouts.values() if r.group == 0]
    assert all(np.array_equal(r.chains[0, 0], group0[0].chains[0, 0]) for r in group0)
    assert not np.array_equal(group0[0].chunks, group0[1].chunks)
    s = back.stats()
    assert s["pairs"] == len(prefs.pairs) > 0 and s["start_states"] == 6 and s["rollouts"] == 24
    merged = merge([(path, back), (path, back)])
    assert len(merged.pairs) == 2 * len(back.pairs) and len(merged.rollouts) == 48
    assert merged.stats()["start_states"] == 12, "each file's start states stay apart after a merge"


def test_chunk_pairs_branch_from_a_replayed_state(tmp_path):
    """On a task with several decisions per episode, each branch shares its prefix with the
    rollout it came from and differs from the branch point on."""
    policy = tiny_policy("diffusion", obs_dim=2, action_dim=2, obs_horizon=1, pred_horizon=4, action_horizon=2)
    cfg = PairsConfig(states=3, streams=2, chunk_states=4, chunk_streams=3, rank="return")
    prefs = collect_prefs(policy, "tiny", EnvConfig(task="toy_envs:Reach-v0", envs=4), cfg, seed=0)
    chunk_pairs = [p for p in prefs.pairs if p.kind == "chunk"]
    branches = [r for r in prefs.rollouts.values() if r.start_decision > 0]
    assert len(branches) == 12 and chunk_pairs
    for p in chunk_pairs:
        a, b = prefs.rollouts[p.chosen], prefs.rollouts[p.rejected]
        t = a.start_decision
        assert t == b.start_decision and np.array_equal(a.chunks[:t], b.chunks[:t])
        assert not np.array_equal(a.chunks[t], b.chunks[t])


def test_shared_branch_noise_is_the_branches_own_at_the_branch_point_and_the_states_after_it():
    """--branch-noise shared: the branches of a state draw their own noise at the branch point and
    the state's shared noise after it (common random numbers), so their outcomes differ by the
    branch chunk and less by the luck of later draws; by default each keeps its own throughout."""
    policy = tiny_policy("diffusion", obs_dim=2, action_dim=2, obs_horizon=1, pred_horizon=4, action_horizon=2)
    t = 3

    def draws(shared_after: bool) -> list[list[torch.Tensor]]:
        out = []
        for noise in group_noise(seed=0, group=5, streams=3):
            slot = Slot(None, np.zeros(2), 5, 0, noise, start_decision=t, shared_after=shared_after)
            slot.chunks = [None] * t  # the replayed prefix
            row = []
            for _ in range(3):  # the branch point and two decisions after it
                row.append(slot.initial_noise(policy))
                slot.chunks.append(None)
            out.append(row)
        return out

    shared, own = draws(True), draws(False)
    for a, b in itertools.combinations(range(3), 2):
        assert not torch.equal(shared[a][0], shared[b][0])  # each branch's own chunk
        assert all(torch.equal(shared[a][k], shared[b][k]) for k in (1, 2))  # then the same draws
        assert all(not torch.equal(own[a][k], own[b][k]) for k in range(3))
    assert all(torch.equal(shared[a][0], own[a][0]) for a in range(3))  # the branch chunk is unchanged
    # end to end: a collection with shared noise runs and its branches still differ at the branch point
    cfg = PairsConfig(states=2, streams=2, chunk_states=3, chunk_streams=3, rank="return", branch_noise="shared")
    prefs = collect_prefs(policy, "tiny", EnvConfig(task="toy_envs:Reach-v0", envs=4), cfg, seed=0)
    branches = [r for r in prefs.rollouts.values() if r.start_decision > 0]
    assert len(branches) == 9
    with pytest.raises(ConfigError, match="--branch-noise shared needs --sampler ddim"):
        PairsConfig(branch_noise="shared", sampler="stochastic").check()


def test_noise_scales_put_the_zero_noise_mode_against_samples(tmp_path, base_dir):
    """--noise-scales 0 1: every other stream (and branch) runs the policy's zero-noise mode, the
    others keep exactly the N(0, I) draws they have without the flag; the file says how it was made."""
    policy = load_policy(base_dir)
    env = EnvConfig(task=TASK, envs=4)
    plain = collect_prefs(policy, "b", env, PairsConfig(states=3, streams=4), seed=0)
    mixed_cfg = PairsConfig(states=3, streams=4, noise_scales=[0.0, 1.0])
    mixed = collect_prefs(policy, "b", env, mixed_cfg, seed=0)
    for rid, r in mixed.rollouts.items():
        stream = int(rid.removeprefix("r")) % 4
        if stream % 2:  # an N(0, I) stream: the rollout it has without the flag
            assert np.array_equal(r.chunks, plain.rollouts[rid].chunks)
        else:
            first = policy.predict_chunk(torch.as_tensor(r.obs[:1]), noise=torch.zeros(1, *policy.noise_shape))
            np.testing.assert_allclose(r.chunks[0], first[0].numpy(), atol=1e-6)
    assert "noise scales 0 1" in mixed.meta["collection"] and "noise scales 1," in plain.meta["collection"]
    write_prefs(tmp_path / "m.hdf5", mixed)
    assert read_prefs(tmp_path / "m.hdf5").stats()["collection"] == mixed_cfg.describe()
    with pytest.raises(ConfigError, match="--noise-scales needs --sampler ddim"):
        PairsConfig(noise_scales=[0.0, 1.0], sampler="stochastic").check()
    with pytest.raises(ConfigError, match="scales >= 0"):
        PairsConfig(noise_scales=[-1.0]).check()


def test_labels_from_a_person_are_read_back_and_override(prefs_file, tmp_path):
    path, prefs = prefs_file
    copy = tmp_path / "p.hdf5"
    write_prefs(copy, prefs)
    first, second = prefs.pairs[0].id, prefs.pairs[1].id
    append_label(labels_path(copy), first, "right")
    append_label(labels_path(copy), second, "tie")
    append_label(labels_path(copy), second, "left")  # the last answer wins
    with open(labels_path(copy), "a") as f:
        f.write('{"pair": "p0000')  # a torn last line from a closed tab
    assert read_labels(labels_path(copy)) == {first: "right", second: "left"}
    back = read_prefs(copy)
    by_id = {p.id: p for p in back.pairs}
    assert by_id[first].label == "rejected" and by_id[first].source == "person"
    assert by_id[first].preferred() == (prefs.pairs[0].rejected, prefs.pairs[0].chosen)
    assert by_id[second].label == "chosen" and by_id[second].source == "person"


def test_best_pairing_keeps_only_pairs_won_by_a_states_best_rollout():
    """--pairing best: of the pairs --pairing all makes, exactly those whose preferred member
    scores its start state's best, so filtered BC sees each state's best rollout alone."""
    policy = tiny_policy("diffusion", obs_dim=2, action_dim=2, obs_horizon=1, pred_horizon=4, action_horizon=2)
    env = EnvConfig(task="toy_envs:Reach-v0", envs=4)
    every = collect_prefs(policy, "t", env, PairsConfig(states=4, streams=4, rank="return"), seed=0)
    best = collect_prefs(policy, "t", env, PairsConfig(states=4, streams=4, rank="return", pairing="best"), seed=0)
    top: dict[int, float] = {}
    for r in every.rollouts.values():
        top[r.group] = max(top.get(r.group, -np.inf), r.episode_return)
    won_by_best = [
        p for p in every.pairs if every.rollouts[p.chosen].episode_return == top[every.rollouts[p.chosen].group]
    ]
    assert [(p.chosen, p.rejected) for p in best.pairs] == [(p.chosen, p.rejected) for p in won_by_best]
    assert len(best.pairs) == 4 * 3 < len(every.pairs)  # the best against each of the other three
    assert "pairing best" in best.meta["collection"]
    with pytest.raises(ConfigError, match="--pairing 'worst'"):
        PairsConfig(pairing="worst").check()


def test_flipped_labels_swap_a_fixed_share_of_pairs(prefs_file):
    _, prefs = prefs_file
    clean = PairData(prefs, torch.device("cpu"), needs_chains=False)
    noisy = PairData(prefs, torch.device("cpu"), needs_chains=False, flip=0.5, seed=1)
    flipped = (clean.w != noisy.w).float()
    assert torch.equal(clean.w[flipped == 1], noisy.l[flipped == 1]) and 0.2 < flipped.mean() < 0.8
    again = PairData(prefs, torch.device("cpu"), needs_chains=False, flip=0.5, seed=1)
    assert torch.equal(again.w, noisy.w)


def test_pair_batches_match_their_members(prefs_file):
    _, prefs = prefs_file
    data = PairData(prefs, torch.device("cpu"), needs_chains=True)
    b = data.sample(5, 3, torch.Generator().manual_seed(0), shared_index=True)
    assert b.obs_w.shape == (15, 1, 2) and b.chunk_w.shape == (15, 8, 2) and b.chain_w.shape[0] == 15
    chosen = {p.chosen for p in prefs.pairs}
    wins = {tuple(r.chunks[0].ravel()) for rid, r in prefs.rollouts.items() if rid in chosen}
    assert all(tuple(c.ravel().tolist()) in {tuple(np.float32(x) for x in w) for w in wins} for c in b.chunk_w.numpy())


# ----- bad input: one clear message each ---------------------------------------------
def test_preference_file_from_another_task_is_refused(tmp_path, prefs_file):
    path, _ = prefs_file
    other = tiny_policy("diffusion", obs_dim=2, action_dim=2, pred_horizon=4, action_horizon=2)
    other.config.task = "toy_envs:Reach-v0"
    other.save(tmp_path / "other")
    with pytest.raises(PrefsError, match="was collected for .*pred_horizon=8 but the policy has .*pred_horizon=4"):
        train_dpo(DPOConfig(base=str(tmp_path / "other"), prefs=(path,), out=tmp_path / "r", progress=False))
    other = tiny_policy("diffusion", obs_dim=2, action_dim=2, obs_horizon=1, pred_horizon=8, action_horizon=8)
    other.config.task = "toy_envs:Reach-v0"  # same sizes, another task
    other.save(tmp_path / "other2")
    with pytest.raises(PrefsError, match="collected on task 'toy_envs:Obstacle-v0'"):
        train_dpo(DPOConfig(base=str(tmp_path / "other2"), prefs=(path,), out=tmp_path / "r2", progress=False))


def test_all_tie_or_unlabelled_file_is_refused(tmp_path, prefs_file, base_dir):
    prefs = copy.deepcopy(prefs_file[1])
    for p in prefs.pairs:
        p.label = "tie"
    write_prefs(tmp_path / "ties.hdf5", prefs)
    with pytest.raises(PrefsError, match="no usable pair"):
        train_dpo(quick(tmp_path, base_dir, prefs=(tmp_path / "ties.hdf5",), rounds=1))
    with pytest.raises(ConfigError, match="--unlabelled pairs cannot train"):
        quick(tmp_path, base_dir, unlabelled=True)


def test_garbage_in_a_labels_file_is_one_clear_error(tmp_path, prefs_file):
    write_prefs(tmp_path / "p.hdf5", prefs_file[1])
    labels_path(tmp_path / "p.hdf5").write_text('{"pair": "p000000", "answer": "left"}\nhello world\n')
    with pytest.raises(PrefsError, match="line 2 is not a label record"):
        read_prefs(tmp_path / "p.hdf5")
    labels_path(tmp_path / "p.hdf5").write_text('{"pair": ["p000000"], "answer": "left"}\n')
    with pytest.raises(PrefsError, match="line 1 is not a label record"):
        read_prefs(tmp_path / "p.hdf5")


def test_labels_naming_unknown_pairs_are_refused(tmp_path, prefs_file):
    _, prefs = prefs_file
    write_prefs(tmp_path / "p.hdf5", prefs)
    append_label(labels_path(tmp_path / "p.hdf5"), "p999999", "left")
    with pytest.raises(PrefsError, match="lacks"):
        read_prefs(tmp_path / "p.hdf5")


def test_bad_preference_files(tmp_path, prefs_file):
    path, prefs = prefs_file
    with pytest.raises(PrefsError, match="does not exist"):
        read_prefs(tmp_path / "none.hdf5")
    (tmp_path / "junk.hdf5").write_bytes(b"not hdf5")
    (tmp_path / "junk.jsonl").write_text("")
    with pytest.raises(PrefsError, match="not a readable HDF5"):
        read_prefs(tmp_path / "junk.hdf5")
    write_prefs(tmp_path / "nan.hdf5", prefs)
    import h5py

    with h5py.File(tmp_path / "nan.hdf5", "a") as f:
        rid = next(iter(f["rollouts"]))
        f["rollouts"][rid]["chunks"][0, 0, 0] = np.nan
    with pytest.raises(PrefsError, match="NaN"):
        read_prefs(tmp_path / "nan.hdf5")


def test_a_policy_without_the_sampler_is_refused(tmp_path, base_dir, prefs_file):
    from dpft.finetune.dsrl.steered import SteeredPolicy  # noqa: F401  (registers the type)

    with pytest.raises(ConfigError, match="unknown --loss"):
        get_loss("ppo")
    path, prefs = prefs_file
    write_prefs(tmp_path / "ddim.hdf5", prefs)
    import h5py

    with h5py.File(tmp_path / "ddim.hdf5", "a") as f:
        for g in f["rollouts"].values():
            del g["chains"]
    with pytest.raises(PrefsError, match="--sampler stochastic"):
        train_dpo(quick(tmp_path, base_dir, loss="d3po", prefs=(tmp_path / "ddim.hdf5",), rounds=1))
    with pytest.raises(ConfigError, match="add --sampler stochastic"):  # later rounds would collect without chains
        train_dpo(quick(tmp_path / "r", base_dir, loss="d3po", prefs=(path,), rounds=2))
    with pytest.raises(PrefsError, match="noise level 1.0 but d3po would score it at 0.5"):
        train_dpo(quick(tmp_path / "n", base_dir, loss="d3po", prefs=(path,), rounds=1, noise_level=0.5))


def test_cli_errors_are_one_line(tmp_path, capsys, base_dir):
    assert cli.main(["finetune", "dpo", "--base", str(base_dir), "--loss", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown --loss 'nope'" in capsys.readouterr().err
    assert cli.main(["prefs", "stats", "--files", str(tmp_path / "missing.hdf5")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("how", ["second ctrl-c", "stop requested"])
def test_interrupted_run_resumes_exactly(tmp_path, base_dir, monkeypatch, how):
    """Mid-step (a second Ctrl-C) or at the next step boundary (SIGTERM, a first Ctrl-C)."""
    full = train_dpo(quick(tmp_path / "a", base_dir, steps_per_round=60, checkpoint_every=25))
    calls = {"n": 0}
    real = dpo_train.get_loss("diffusion-dpo")

    def flaky(*args):
        calls["n"] += 1
        if calls["n"] == 90:  # round 1, step 30
            if how == "stop requested":
                request_stop()  # what the SIGTERM handler does; this step still runs
            else:
                raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(dpo_train, "get_loss", lambda name: flaky)
    cfg = quick(tmp_path / "b", base_dir, steps_per_round=60, checkpoint_every=25)
    step = 29 if how == "second ctrl-c" else 30  # the 30th step of round 1 is step 29
    with pytest.raises(RunInterrupted, match=f"interrupted in round 1 at step {step}; .*--resume"):
        train_dpo(cfg)
    monkeypatch.setattr(dpo_train, "get_loss", lambda name: real)
    resumed = train_dpo(quick(tmp_path / "b", base_dir, steps_per_round=60, checkpoint_every=25, resume=True))
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_prefs_collect_command_and_labels_of_an_old_file(tmp_path, capsys, base_dir):
    out = tmp_path / "p.hdf5"
    args = ["prefs", "collect", "--policy", str(base_dir), "--states", "3", "--streams", "3", "--out", str(out)]
    assert cli.main([*args, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["rollouts"] == 9 and stats["task"] == TASK and out.with_suffix(".jsonl").exists()
    assert cli.main(["prefs", "stats", "--files", str(out)]) == 0
    assert "9 rollouts from 3 start states" in capsys.readouterr().out
    append_label(labels_path(out), read_prefs(out).pairs[0].id, "left")
    assert cli.main([*args, "--overwrite"]) == 2  # the answers name the old file's pairs: never silently reused
    assert "holds a person's answers" in capsys.readouterr().err
    assert cli.main(["prefs", "merge", "--files", str(out), str(out), "--out", str(tmp_path / "m.hdf5")]) == 0
    assert len(read_prefs(tmp_path / "m.hdf5").rollouts) == 18


def test_a_policy_type_without_a_denoiser_is_refused(tmp_path, monkeypatch, base_dir):
    """A steered, residual or actor policy has no denoiser of its own to update or to sample a chain from."""
    from dpft.finetune.dpo.sampling import check_sampler

    class Steered:  # stands for any Policy that is not a diffusion/flow policy
        type_name = "dsrl"

    monkeypatch.setattr(dpo_train, "load_policy", lambda *a, **k: Steered())
    with pytest.raises(ConfigError, match="'dsrl' policy.*must be a diffusion or flow policy"):
        train_dpo(quick(tmp_path, base_dir))
    with pytest.raises(ConfigError, match="--sampler stochastic needs a diffusion or flow policy"):
        check_sampler(Steered(), "stochastic")


class _OnlyThisProcess(Shard):
    """A process of a larger run, with the others' gathers left out (no process group here)."""

    def gather(self, items):
        return list(items)


def test_a_process_with_no_rollouts_to_run_still_takes_part():
    """More processes than rollouts (3 processes, 2 rollouts): the third runs none and returns
    nothing, instead of failing before the gather that the others wait in."""
    from dpft.finetune.dpo.sampling import rollout_groups

    policy = tiny_policy("diffusion", obs_dim=2, action_dim=2, obs_horizon=1, pred_horizon=4, action_horizon=2)
    env = EnvConfig(task="toy_envs:Reach-v0", envs=4)
    assert rollout_groups(policy, env, [0], 2, shard=_OnlyThisProcess(2, 3)) == []
    assert len(rollout_groups(policy, env, [0], 2, shard=_OnlyThisProcess(1, 3))) == 1


def test_overwrite_does_not_reuse_the_old_runs_pairs(tmp_path):
    """--overwrite clears what a run wrote, a DPO run's rounds of pairs and a multi-process
    run's per-process checkpoints included (a new run must not train on the old run's pairs)."""
    from dpft.base_policies.infra.run_folder import RunFolder

    run = RunFolder(tmp_path / "run")
    for rel in ("prefs/round_000.hdf5", "ranks/checkpoint1/state.json", "best_policy.json", "config.yaml", "notes.txt"):
        (run.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (run.root / rel).write_text("x")
    run.clear()
    assert sorted(p.name for p in run.root.iterdir()) == ["notes.txt"]  # a file of the user's stays


def test_d3po_on_pairs_without_chains_says_which_flags_to_use(tmp_path, prefs_file, base_dir, capsys):
    """Pairs collected with the default (ddim) sampler keep no chains: one line naming the flag."""
    prefs = copy.deepcopy(prefs_file[1])
    prefs.meta |= {"sampler": "ddim", "noise_level": ""}
    for r in prefs.rollouts.values():
        r.chains = None
    write_prefs(tmp_path / "ddim.hdf5", prefs)
    argv = ["finetune", "dpo", "--base", str(base_dir), "--prefs", str(tmp_path / "ddim.hdf5"), "--loss", "d3po"]
    assert cli.main([*argv, "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--sampler stochastic" in err and len(err.splitlines()) == 1, err


def test_a_partly_labelled_file_says_what_trains_and_the_run_keeps_the_labels(tmp_path, prefs_file, base_dir, capsys):
    prefs = copy.deepcopy(prefs_file[1])
    for p in prefs.pairs[2:]:
        p.label, p.source = None, None
    write_prefs(tmp_path / "p.hdf5", prefs)
    append_label(labels_path(tmp_path / "p.hdf5"), prefs.pairs[2].id, "left")  # a person labels one more
    cfg = quick(tmp_path, base_dir, prefs=(tmp_path / "p.hdf5",), rounds=1, steps_per_round=2, eval_episodes=2)
    train_dpo(cfg)
    out = capsys.readouterr().out
    n = len(prefs.pairs)
    assert f"3 of {n} pairs train (1 labelled by a person); {n - 3} unlabelled" in out
    record = json.loads((cfg.out / "given_prefs.json").read_text())
    assert record[0]["used"] == 3 and set(record[0]["sha256"]) == {"p.hdf5", "p.jsonl", "p.labels.jsonl"}
    assert (cfg.out / "given" / "0-p.labels.jsonl").read_text() == labels_path(tmp_path / "p.hdf5").read_text()
    append_label(labels_path(tmp_path / "p.hdf5"), prefs.pairs[3].id, "right")  # the labels change
    with pytest.raises(ConfigError, match="changed since this run started"):
        train_dpo(replace(cfg, resume=True, rounds=2))


def test_final_guarded_and_best_choose_among_the_rounds_with_intervals(tmp_path, prefs_file, base_dir):
    """The same rule and files as DSRL/residual: guarded keeps the base until a round beats it on
    validation episodes of its own; best keeps the best evaluated round; final_eval.json has 95%
    intervals (the schema of `dpft eval`)."""
    write_prefs(tmp_path / "p.hdf5", prefs_file[1])
    common = dict(prefs=(tmp_path / "p.hdf5",), rounds=2, steps_per_round=3, eval_episodes=6, states=4, streams=2)
    guarded = quick(tmp_path, base_dir, out=tmp_path / "g", final="guarded", validation_episodes=4, **common)
    policy = train_dpo(guarded)
    final = json.loads((guarded.out / "final_eval.json").read_text())
    record = json.loads((guarded.out / "guarded.json").read_text())
    assert final["final"] == "guarded" and final["deployed"] in ("base", "fine-tuned")
    assert record["base"]["val"]["episodes"] == 4 and len(final["success_ci95"]) == 2 and "return_ci95" in final
    rows = [json.loads(x) for x in (guarded.out / "evals.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [-1, 0, 1] and all("deployed" in r for r in rows[1:])
    if final["deployed"] == "base":  # policy/ is the base itself, with its weights unchanged
        base = load_policy(base_dir)
        assert all(torch.equal(a, b) for a, b in zip(policy.state_dict().values(), base.state_dict().values()))
    best = quick(tmp_path, base_dir, out=tmp_path / "b", final="best", **common)
    train_dpo(best)
    chosen = json.loads((best.out / "best_policy.json").read_text())
    final = json.loads((best.out / "final_eval.json").read_text())
    evals = [json.loads(x) for x in (best.out / "evals.jsonl").read_text().splitlines()][1:]
    top = max((r["success_rate"], r["return_mean"]) for r in evals)
    assert (final["success_rate"], final["return_mean"]) == top and final["policy_steps"] == chosen["env_steps"]


def _seppo_setup(seed: int = 0):
    torch.manual_seed(seed)
    model = tiny_policy("diffusion", obs_dim=3, action_dim=2)
    model.fit_normalizers(torch.randn(100, 3), torch.rand(100, 2) * 2 - 1)
    ref = copy.deepcopy(model)
    obs = torch.randn(6, 3)
    b = batch_from(obs, torch.rand(6, 8, 2) * 2 - 1, torch.randn(6, 3), torch.rand(6, 8, 2) * 2 - 1)
    b = replace(b, pair=torch.tensor([0, 0, 1, 1, 2, 2]), pairs=3)  # two rows per pair
    return model, ref, b


def test_seppo_samples_are_the_references_own_chunks_at_the_chosen_observations():
    model, ref, b = _seppo_setup()
    prepared = prepare_batch("seppo", ref, b, torch.Generator().manual_seed(3))
    noise = ref.initial_noise(6, torch.Generator().manual_seed(3))
    assert torch.equal(prepared.obs_l, b.obs_w) and torch.equal(prepared.chunk_w, b.chunk_w)
    assert torch.equal(prepared.chunk_l, ref.predict_chunk(b.obs_w, noise))  # the rejected member is never used
    assert prepare_batch("diffusion-dpo", ref, b, None) is b


def test_seppo_is_its_written_out_objective():
    """-log sigma(-beta ((e_w - e_ref,w) - I (e_s - e_ref,s))) per pair, I = +1 where the model fits
    the preferred chunk better than the reference does, else -1; at the start (model = reference) log 2."""
    model, ref, b = _seppo_setup()
    b = prepare_batch("seppo", ref, b, torch.Generator().manual_seed(3))
    cfg = LossConfig(beta=50.0, bc_weight=0.0, clip=0.2, noise_level=None, generator=torch.Generator().manual_seed(0))
    loss, info = seppo(model, ref, b, cfg)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6) and info["reference_sample_losing"] == 0.0
    t, noise = model.sample_times(6, torch.Generator().manual_seed(9)), torch.randn(6, 8, 2)
    b = replace(b, t=t, noise=noise)
    opt, first = torch.optim.SGD(model.parameters(), lr=1e-2), b.pair == 0
    for _ in range(20):  # the model now fits pair 0's preferred chunks better than the reference, and others worse
        opt.zero_grad()
        model.denoising_loss(b.obs_w[first], b.chunk_w[first], t[first], noise[first]).mean().backward()
        opt.step()
    with torch.no_grad():
        members = {"w": (b.obs_w, b.chunk_w), "s": (b.obs_l, b.chunk_l)}
        err = {(who, m): p.denoising_loss(*members[m], t, noise) for who, p in (("model", model), ("ref", ref))
               for m in members}  # fmt: skip
    expected, signs = [], []
    for k in range(3):
        rows = b.pair == k
        d_w = (err["model", "w"][rows] - err["ref", "w"][rows]).mean()
        d_s = (err["model", "s"][rows] - err["ref", "s"][rows]).mean()
        sign = 1.0 if d_w < 0 else -1.0
        signs.append(sign)
        expected.append(-torch.nn.functional.logsigmoid(-50.0 * (d_w - sign * d_s)))
    loss, info = seppo(model, ref, b, cfg)
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    assert info["reference_sample_losing"] == pytest.approx(np.mean([s > 0 for s in signs]))
    assert set(signs) == {1.0, -1.0}  # both branches of the anchor are exercised


def test_seppo_draws_each_rounds_reference_from_the_base_and_earlier_rounds(tmp_path, base_dir, prefs_file):
    draws = {reference.draw(s, 3) for s in range(200)}
    assert draws == {-1, 0, 1, 2} and reference.draw(7, 3) == reference.draw(7, 3)  # a resumed run draws the same
    with pytest.raises(ConfigError, match="drop --resync-reference"):
        quick(tmp_path, base_dir, loss="seppo", resync_reference=True)
    write_prefs(tmp_path / "p.hdf5", prefs_file[1])
    cfg = quick(tmp_path, base_dir, loss="seppo", prefs=(tmp_path / "p.hdf5",), rounds=2, steps_per_round=3,
                eval_episodes=4, states=4, streams=2)  # fmt: skip
    train_dpo(cfg)
    kept = load_policy(base_dir)
    load_weights(kept, cfg.out / "references" / "round_000", "model.safetensors")
    ref = load_policy(base_dir)
    load_weights(ref, cfg.out / "checkpoint", "ref.safetensors")
    last = load_policy(base_dir)
    load_weights(last, cfg.out / "references" / "round_001", "model.safetensors")
    drawn = {-1: load_policy(base_dir), 0: kept, 1: last}[reference.draw(cfg.seed, 2)]
    # the last round's policy is kept and the next reference drawn, so `--resume --rounds N` can add rounds
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), drawn.state_dict().values()))
    assert cli.main(["finetune", "dpo", "--out", str(cfg.out), "--resume", "--rounds", "3", "--no-progress"]) == 0
    assert (cfg.out / "references" / "round_002").exists()


def test_a_bare_run_takes_the_preset_recipe_and_resumes_with_a_flag_repeated(tmp_path, base_dir, capsys):
    """On a task that reports success the unset settings are the preset's mode recipe (printed and
    recorded; on this task of one-decision episodes its chunk-level pairs are skipped with a note, not
    an error); a list setting read back from config.yaml equals the same flag given again."""
    out = tmp_path / "bare"
    argv = ["finetune", "dpo", "--base", str(base_dir), "--states", "4", "--steps-per-round", "3"]
    assert cli.main([*argv, "--eval-episodes", "4", "--final", "last", "--no-progress", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    chosen = "rounds 1, loss filtered-bc, streams 2, chunk-states 120, chunk-streams 2, noise-scales 0 1, pairing best"
    assert f"settings: {chosen} (preset 'success' for {TASK})" in said
    assert "note: every rollout ended after one decision, so there are no chunk-level pairs" in said
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert (recorded["loss"], recorded["noise_scales"], recorded["pairing"], recorded["states"]) == (
        "filtered-bc", [0.0, 1.0], "best", 4
    )  # fmt: skip
    again = ["finetune", "dpo", "--out", str(out), "--resume", "--rounds", "2", "--noise-scales", "0", "1"]
    assert cli.main([*again, "--no-progress"]) == 0
    assert len((out / "evals.jsonl").read_text().splitlines()) == 3  # the base, round 0, round 1


def test_a_run_recorded_before_the_preset_chose_its_pairs_resumes_as_it_ran(tmp_path, base_dir):
    """A config.yaml written before --pairing and --noise-scales existed resumes with what they were then
    (every pair, N(0, I) streams), not with the preset's recipe."""
    cfg = quick(tmp_path, base_dir, rounds=1, states=4, streams=2, steps_per_round=3, eval_episodes=4)
    train_dpo(cfg)
    recorded = yaml.safe_load((cfg.out / "config.yaml").read_text())
    for key in ("pairing", "noise_scales", "chunk_streams"):
        del recorded[key]
    (cfg.out / "config.yaml").write_text(yaml.safe_dump(recorded))
    assert cli.main(["finetune", "dpo", "--out", str(cfg.out), "--resume", "--rounds", "2", "--no-progress"]) == 0
    again = yaml.safe_load((cfg.out / "config.yaml").read_text())
    assert (again["pairing"], again["noise_scales"], again["chunk_streams"], again["loss"]) == (
        "all", [1.0], 2, "diffusion-dpo"
    )  # fmt: skip


@pytest.mark.slow
def test_seppo_moves_the_mode(tmp_path, base_dir):
    policy = train_dpo(quick(tmp_path, base_dir, loss="seppo", rounds=3))
    assert right_share(policy) >= 0.75


def test_ema_decay_saves_the_moving_average_of_the_weights(tmp_path, prefs_file, base_dir):
    """--ema-decay: the saved policy is the average the checkpoint keeps, not the last weights, and
    after one step it is the base moved by (1 - decay) of that step (no decay warm-up: the
    fine-tuning starts from good weights)."""
    write_prefs(tmp_path / "p.hdf5", prefs_file[1])
    common = dict(prefs=(tmp_path / "p.hdf5",), rounds=None, eval_episodes=2, states=4, streams=2)
    one = quick(tmp_path, base_dir, out=tmp_path / "one", steps_per_round=1, ema_decay=0.9, **common)
    saved = train_dpo(one).state_dict()
    recorded = yaml.safe_load((one.out / "config.yaml").read_text())  # no --rounds: the preset's, recorded
    assert (recorded["rounds"], recorded["preset"]) == (1, "success")
    last = load_file(str(one.out / "checkpoint" / "model.safetensors"))
    base = load_policy(base_dir).state_dict()
    for k, b in base.items():
        if k in last and last[k].is_floating_point():
            assert torch.allclose(saved[k], b + 0.1 * (last[k] - b), atol=1e-6), k
    assert any(not torch.equal(saved[k], last[k]) for k in last)
    on_disk = load_policy(one.out).state_dict()
    assert all(torch.equal(on_disk[k], v) for k, v in saved.items())
