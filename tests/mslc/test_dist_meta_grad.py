"""`mslc.grad=exact` at world size 2 equals one process on the concatenated batches; `local` does not."""

import copy

import torch
from torch import nn

from mslc.corrector import Corrector
from mslc.meta_step import mslc_step
from tests.dist_helpers import run_ranks

N, M, D, C = 8, 6, 5, 3  # per rank


def problem(kind="loss"):
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, C)).double()
    corrector = Corrector(hidden=8, kind=kind, num_classes=C).double()
    with torch.no_grad():
        for p in list(model.parameters()) + list(corrector.parameters()):
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randn(2 * N, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (2 * N,), generator=g)
    y_prev = torch.softmax(torch.randn(2 * N, C, generator=g, dtype=torch.float64), 1)
    xm = torch.randn(2 * M, D, generator=g, dtype=torch.float64) * 2
    ym = torch.randint(0, C, (2 * M,), generator=g)
    return model, corrector, (x, y, y_prev, xm, ym)


def step(model, corrector, batch, mode, impl="double-backward"):
    x, y, y_prev, xm, ym = batch
    opt_w = torch.optim.SGD(model.parameters(), lr=0.3)
    opt_t = torch.optim.SGD(corrector.parameters(), lr=0.5)
    mslc_step(
        model, corrector, x, y, y_prev, xm, ym, opt_w=opt_w, opt_theta=opt_t, lr_virtual=0.7, meta_grad=mode, impl=impl
    )
    return (
        [p.grad.clone() for p in corrector.parameters()],
        [p.detach().clone() for p in model.parameters()],
        [p.detach().clone() for p in corrector.parameters()],
    )


def rank_fn(rank, world, mode, impl="double-backward", kind="loss"):
    model, corrector, (x, y, y_prev, xm, ym) = problem(kind)
    n, m = slice(rank * N, (rank + 1) * N), slice(rank * M, (rank + 1) * M)
    return step(model, corrector, (x[n], y[n], y_prev[n], xm[m], ym[m]), mode, impl)


def close(a, b, rtol=1e-5):
    return all(torch.allclose(u, v, rtol=rtol, atol=1e-12) for u, v in zip(a, b))


def test_exact_meta_gradient_matches_one_process_and_local_does_not(tmp_path):
    model, corrector, batch = problem()
    ref = step(copy.deepcopy(model), copy.deepcopy(corrector), batch, "exact")
    exact = run_ranks(rank_fn, 2, tmp_path / "exact", "exact")
    local = run_ranks(rank_fn, 2, tmp_path / "local", "local")
    for r in range(2):
        assert close(exact[r][0], ref[0]), "θ-gradient"
        assert close(exact[r][1], ref[1]), "updated classifier weights"
        assert close(exact[r][2], ref[2]), "updated θ"
    assert close(local[0][2], local[1][2], rtol=1e-12)  # θ identical on both ranks, also in local mode
    assert not close(local[0][0], ref[0], rtol=1e-3)
    assert max((a - b).abs().max().item() for a, b in zip(exact[0][0], ref[0])) < max(
        (a - b).abs().max().item() for a, b in zip(local[0][0], ref[0])
    )


def test_forward_mode_exact_meta_gradient_matches_one_process(tmp_path):
    model, corrector, batch = problem()
    ref = step(copy.deepcopy(model), copy.deepcopy(corrector), batch, "exact")
    jvp = run_ranks(rank_fn, 2, tmp_path / "jvp", "exact", "jvp")
    for r in range(2):
        assert close(jvp[r][0], ref[0]) and close(jvp[r][1], ref[1]) and close(jvp[r][2], ref[2])


def test_class_aware_corrector_gets_the_exact_meta_gradient_at_two_ranks(tmp_path):
    """The class-aware corrector has the same interface: both θ-gradient computations stay exact."""
    model, corrector, batch = problem("class")
    ref = step(copy.deepcopy(model), copy.deepcopy(corrector), batch, "exact")
    for impl in ("double-backward", "jvp"):
        got = run_ranks(rank_fn, 2, tmp_path / impl, "exact", impl, "class")
        for r in range(2):
            assert close(got[r][0], ref[0]) and close(got[r][1], ref[1]) and close(got[r][2], ref[2]), impl
