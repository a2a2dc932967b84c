"""The sharded bank over 2 and 4 gloo processes equals one LocalBank after the same seeded
random sequence of reads and writes (through all-to-all, and through paired sends and
receives), and each rank holds at most ceil(N / W) rows."""

import math

import numpy as np
import torch

from mslc.bank import LocalBank, ShardedBank
from tests.dist_helpers import run_ranks

N, C, STEPS = 37, 5, 14


def script(world):
    """Each step: disjoint random index batches for the ranks (uneven sizes, some empty), and rows."""
    g = torch.Generator().manual_seed(1234 + world)
    for step in range(STEPS):
        perm = torch.randperm(N, generator=g)
        sizes = [int(torch.randint(0, 9, (1,), generator=g)) for _ in range(world)]
        at = [sum(sizes[:r]) for r in range(world + 1)]
        batches = [perm[at[r] : at[r + 1]] for r in range(world)]
        rows = [torch.softmax(torch.randn(len(b), C, generator=g), 1) for b in batches]
        alphas = [torch.rand(len(b), generator=g) for b in batches]
        yield step, batches, rows, alphas


def run_ops(bank, rank, world):
    """The script on ``bank``: as ``rank`` (its own batches), or all ranks' batches in rank
    order (``rank`` None, the single-process reference). Reads both ways: ``prev`` (a
    step's) and ``rows``."""
    reads = []
    for step, batches, rows, alphas in script(world):
        both = step % 4 == 3  # rows() now and then: between, the epoch policy's writes pile up unsent
        read = lambda b: (bank.prev(b), torch.cat(bank.rows(b), 1) if both else None)  # noqa: E731
        reads.append([read(b) for b in batches] if rank is None else read(batches[rank]))
        for r, b in enumerate(batches):
            if rank is None or r == rank:
                if step < 4:
                    bank.accumulate(b, rows[r])
                    bank.put(b, y_hat=rows[r])
                else:
                    bank.put(
                        b,
                        y_hat=rows[r],
                        y_tilde=rows[r].flip(1),
                        alpha=alphas[r],
                        beta=None if step % 2 else alphas[r] / 2,
                    )
        if step == 3:
            bank.finish_warmup()
        if step % 3 == 2:
            bank.end_epoch()
    return reads


LABELS = np.arange(N) % C


def rank_fn(rank, world, refresh, exchange):
    bank = ShardedBank(LABELS, C, refresh=refresh, exchange=exchange)
    reads = run_ops(bank, rank, world)
    return {"reads": reads, "local_rows": bank.local.num_samples, "table": bank.table(), "state": bank.state_dict()}


def check(out, world, refresh):
    ref = LocalBank(LABELS, C, refresh=refresh)
    ref_reads = run_ops(ref, None, world)
    for r in range(world):
        assert out[r]["local_rows"] <= math.ceil(N / world)
        for step, (prev, both) in enumerate(out[r]["reads"]):
            torch.testing.assert_close(prev, ref_reads[step][r][0])
            if both is not None:
                torch.testing.assert_close(both, ref_reads[step][r][1])
        for k, v in ref.table().items():
            np.testing.assert_allclose(out[r]["table"][k], v, rtol=1e-6, equal_nan=True)
    # the gathered state loads into a LocalBank (re-sharding to any world size)
    back = LocalBank(LABELS, C, refresh=refresh)
    back.load_state_dict(out[0]["state"])
    for k, v in ref.table().items():
        np.testing.assert_allclose(back.table()[k], v, rtol=1e-6, equal_nan=True)
    assert (ref.table()["y_tilde"].sum(1) > 0.99).all()


def test_sharded_bank_equals_local_bank(tmp_path):
    for refresh in ("epoch", "step"):
        check(run_ranks(rank_fn, 2, tmp_path / refresh, refresh, "all_to_all"), 2, refresh)


def test_sharded_bank_on_four_ranks_equals_local_bank_both_exchanges(tmp_path):
    for refresh, exchange in (("epoch", "all_to_all"), ("step", "p2p")):
        check(run_ranks(rank_fn, 4, tmp_path / refresh, refresh, exchange), 4, refresh)
