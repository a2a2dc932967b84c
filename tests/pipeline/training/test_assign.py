"""Shard-level assignment (pipeline.training.data.assign): each rank streams only its parts of
the shards, the parts are disjoint and cover the epoch, shares differ by at most one
sample, every rank takes the same number of steps, the split changes every epoch, and too
few shards for the workers is an error saying how to re-shard."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import shardset
from pipeline.errors import ShardError
from pipeline.training.data import assign, streaming


def manifest(counts: list[int]) -> dict:
    shards = [{"name": f"train-{i:05d}.tar", "count": c} for i, c in enumerate(counts)]
    return {"splits": {"train": {"count": sum(counts), "shards": shards}}}


@pytest.mark.parametrize(
    "counts, world", [([128, 128, 128, 116], 3), ([100] * 40 + [37], 4), ([7] * 9, 2), ([1000] * 20 + [3], 2)]
)
def test_parts_are_disjoint_cover_every_sample_and_are_balanced(counts, world):
    m = manifest(counts)
    plan = assign.plan_epoch(m, "/s", world=world, seed=3, batch_size=16)
    keys = [np.concatenate([np.arange(p.first, p.stop) for p in parts]) for parts in plan.parts]
    every = np.concatenate(keys)
    assert sorted(every.tolist()) == list(range(sum(counts)))  # disjoint, complete
    assert [len(k) for k in keys] == plan.samples and max(plan.samples) - min(plan.samples) <= 1
    assert plan.steps == min(assign.steps_for(n, 16) for n in plan.samples)
    # a rank reads at most one shard beyond its share
    sizes = {f"/s/train-{i:05d}.tar": 10 * c for i, c in enumerate(counts)}
    assert max(plan.read_shares(sizes)) <= 1 / world + max(counts) / sum(counts) + 1e-9


def test_with_ten_shards_a_rank_reads_at_most_1_1_over_w_and_uses_99_percent():
    for world in (2, 4, 8):
        counts = [500] * (10 * world) + [123]
        plan = assign.plan_epoch(manifest(counts), "/s", world=world, seed=11, batch_size=64)
        sizes = {f"/s/train-{i:05d}.tar": 9000 * c for i, c in enumerate(counts)}
        assert max(plan.read_shares(sizes)) <= 1.1 / world
        assert plan.steps * 64 * world / sum(counts) >= 0.99


def test_the_split_is_reshuffled_every_epoch_and_the_same_on_every_rank():
    m = manifest([50] * 12)
    a, b = (assign.plan_epoch(m, "/s", world=3, seed=s, batch_size=8) for s in (1, 2))
    assert a.parts != b.parts
    assert a.parts == assign.plan_epoch(m, "/s", world=3, seed=1, batch_size=8).parts


def test_a_resize_balances_the_samples_still_to_train():
    m = manifest([100] * 8)
    todo = np.ones(800, bool)
    todo[:300] = False  # the shards an earlier group finished
    todo[450:500] = False
    plan = assign.plan_epoch(m, "/s", world=3, seed=4, batch_size=10, todo=todo)
    keys = np.concatenate([np.arange(p.first, p.stop) for parts in plan.parts for p in parts])
    assert set(np.flatnonzero(todo)) <= set(keys.tolist())
    assert plan.samples == [150, 150, 150]  # 450 to go


def test_too_few_shards_for_the_workers_is_an_error_saying_how_to_reshard():
    m = manifest([1000] * 3)
    with pytest.raises(ShardError, match=r"3 shard\(s\), fewer than the 4 workers.*--shard-size 75"):
        assign.check_world(m, 4)
    notes = []
    assign.check_world(m, 2, log=notes.append)
    assert "1.5 per worker" in notes[0] and "--shard-size 150" in notes[0]
    assign.check_world(manifest([10] * 20), 2, log=notes.append)
    assert len(notes) == 1


def test_each_rank_opens_only_its_own_shards_and_streams_exactly_its_part(fake_shards, monkeypatch):
    m = shardset.load_manifest(fake_shards)
    opened: list[tuple[int, str]] = []
    real = streaming.open_shard
    rank_now = [0]

    def spy(url):
        opened.append((rank_now[0], url))
        return real(url)

    monkeypatch.setattr(streaming, "open_shard", spy)
    plan = assign.plan_epoch(m, str(fake_shards), world=3, seed=7, batch_size=32)
    got = []
    for rank in range(3):
        rank_now[0] = rank
        idx = [i for _, _, i in streaming.stream(plan.parts[rank], num_classes=10, shuffle_seed=7, shuffle_buffer=32)]
        assert len(idx) == plan.samples[rank]
        assert {u for r, u in opened if r == rank} == {p.url for p in plan.parts[rank]}
        got.append(set(idx))
    assert set().union(*got) == set(range(500)) and sum(map(len, got)) == 500


def test_a_shard_missing_samples_of_a_part_is_an_error(fake_shards):
    m = shardset.load_manifest(fake_shards)
    part = assign.plan_epoch(m, str(fake_shards), world=1, seed=0, batch_size=8).parts[0][0]
    wrong = assign.Part(part.url, part.start, part.first, part.stop + 5, part.count)  # keys beyond the shard
    with pytest.raises(ShardError, match="ended at key"):
        list(streaming.stream([wrong], num_classes=10, shuffle_seed=None))


def test_rebatch_gives_exact_batches_from_loader_processes_short_ones():
    import torch

    from pipeline.training.run.epoch import rebatch

    sizes = [8, 3, 8, 8, 5, 2]  # two loader processes, each ending its part with a short batch
    start = [0]

    def batch(n):
        idx = torch.arange(start[0], start[0] + n)
        start[0] += n
        return torch.zeros(n, 1, 2, 2), idx % 3, idx

    out = list(rebatch([batch(n) for n in sizes], 8))
    assert [len(b[2]) for b in out] == [8, 8, 8, 8, 2]
    assert torch.equal(torch.cat([b[2] for b in out]), torch.arange(sum(sizes)))


def test_batches_for_a_gpu_are_pinned_after_rebatching(fake_shards, fake_data_cfg, monkeypatch):
    """With loader processes the batches are re-cut with ``torch.cat``, whose result is pageable
    memory even from pinned inputs: for a CUDA device each re-cut batch is pinned (the loader
    itself no longer pins). Pinning needs CUDA, so the pin is recorded instead of done."""
    import torch

    from pipeline.training.methods.state import build_data
    from pipeline.training.run import epoch as epoch_mod
    from pipeline.training.settings.cli import absolutize, load_config

    pinned, loader_pin = [], []
    monkeypatch.setattr(epoch_mod, "pin_batch", lambda b: pinned.append(b) or b)
    cfg = absolutize(
        load_config(
            "smoke",
            [
                f"data.shard_root={fake_data_cfg.shard_root}",
                f"data.n_meta={fake_data_cfg.n_meta}",
                f"data.n_val={fake_data_cfg.n_val}",
                "data.max_train=0",
                "data.max_test=0",
                "data.loader_workers=2",
            ],
        )
    )
    data = build_data(cfg, torch.device("cpu"))
    real_loader = streaming.loader
    monkeypatch.setattr(streaming, "loader", lambda *a, **k: loader_pin.append(k["pin_memory"]) or real_loader(*a, **k))
    plan = epoch_mod.build_plan(cfg, data, 1)
    got = list(epoch_mod.train_batches(cfg, data, 1, plan, plan.steps, device=torch.device("cuda")))
    assert loader_pin == [False] and len(pinned) == len(got) > 0
    assert all(len(b[1]) == cfg.optim.batch_size for b in got[:-1])
