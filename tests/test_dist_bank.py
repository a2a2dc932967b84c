"""The sharded bank over 2 gloo processes equals one LocalBank after the same seeded
random sequence of reads and writes, and each rank holds at most ceil(N / 2) rows."""

import math

import numpy as np
import torch

from mslc.bank import LocalBank, ShardedBank
from tests.dist_helpers import run_ranks

N, C, STEPS = 37, 5, 12


def script(rank, refresh):
    """Each step: disjoint random index batches for the two ranks (uneven sizes), and rows."""
    g = torch.Generator().manual_seed(1234)
    for step in range(STEPS):
        perm = torch.randperm(N, generator=g)
        sizes = (int(torch.randint(0, 9, (1,), generator=g)), int(torch.randint(1, 9, (1,), generator=g)))
        batches = (perm[: sizes[0]], perm[sizes[0] : sizes[0] + sizes[1]])
        rows = [torch.softmax(torch.randn(len(b), C, generator=g), 1) for b in batches]
        alphas = [torch.rand(len(b), generator=g) for b in batches]
        yield step, batches, rows, alphas


def run_ops(bank, rank, refresh):
    reads = []
    for step, batches, rows, alphas in script(rank, refresh):
        mine = batches[rank] if rank is not None else None
        if rank is None:  # the single-process reference replays both ranks
            reads.append([torch.cat(bank.rows(b), 1) for b in batches])
        else:
            reads.append(torch.cat(bank.rows(mine), 1))
        for r, b in enumerate(batches):
            if rank is None or r == rank:
                if step < 4:
                    bank.accumulate(b, rows[r])
                    bank.put(b, y_hat=rows[r])
                else:
                    bank.put(b, y_hat=rows[r], y_tilde=rows[r].flip(1), alpha=alphas[r],
                             beta=None if step % 2 else alphas[r] / 2)
        if step == 3:
            bank.finish_warmup()
        if step % 3 == 2:
            bank.end_epoch()
    return reads


LABELS = np.arange(N) % C


def rank_fn(rank, world, refresh):
    bank = ShardedBank(LABELS, C, refresh=refresh)
    reads = run_ops(bank, rank, refresh)
    return {"reads": reads, "local_rows": bank.local.num_samples, "table": bank.table(),
            "state": bank.state_dict()}


def test_sharded_bank_equals_local_bank(tmp_path):
    for refresh in ("epoch", "step"):
        ref = LocalBank(LABELS, C, refresh=refresh)
        ref_reads = run_ops(ref, None, refresh)
        out = run_ranks(rank_fn, 2, tmp_path / refresh, refresh)
        for r in range(2):
            assert out[r]["local_rows"] <= math.ceil(N / 2)
            for step, got in enumerate(out[r]["reads"]):
                torch.testing.assert_close(got, ref_reads[step][r])
            for k, v in ref.table().items():
                np.testing.assert_allclose(out[r]["table"][k], v, rtol=1e-6, equal_nan=True)
        # the gathered state loads into a LocalBank (re-sharding to any world size)
        back = LocalBank(LABELS, C, refresh=refresh)
        back.load_state_dict(out[0]["state"])
        for k, v in ref.table().items():
            np.testing.assert_allclose(back.table()[k], v, rtol=1e-6, equal_nan=True)
        assert (ref.table()["y_tilde"].sum(1) > 0.99).all()
