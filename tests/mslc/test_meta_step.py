"""The bilevel step against finite differences and an independent naive look-ahead."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mslc.corrector import Corrector
from mslc.meta_step import lookahead_meta_loss, meta_gradient, mslc_step, soft_cross_entropy
from mslc.models import SmallCNN

LR = 0.5


def tiny_problem(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)
    corrector = Corrector(hidden=6).to(dtype)
    with torch.no_grad():  # spread the corrector's outputs away from 0.5
        for p in list(model.parameters()) + list(corrector.parameters()):
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype))
    x = torch.randn(6, 5, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (6,), generator=g)
    y_prev = torch.softmax(torch.randn(6, 3, generator=g, dtype=dtype), 1)
    xm = torch.randn(4, 5, generator=g, dtype=dtype)
    ym = torch.randint(0, 3, (4,), generator=g)
    return model, corrector, x, y, y_prev, xm, ym


def naive_meta_loss(model, corrector, x, y, y_prev, xm, ym, lr, moved=None):
    """Copy the network, take a real SGD step on ỹ(θ) (of the parameters in ``moved``, by
    default all), evaluate the meta loss."""
    m = copy.deepcopy(model)
    params = list(m.parameters()) if moved is None else [p for n, p in m.named_parameters() if n in moved]
    logits = m(x)
    with torch.no_grad():
        soft, _, _ = corrector(torch.softmax(logits, 1), y, y_prev)
    loss = soft_cross_entropy(logits, soft)
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p -= lr * g
        return F.cross_entropy(m(xm), ym).item()


def finite_difference_check(grads, model, corrector, problem, moved=None, eps=1e-6):
    """Every θ coordinate of ``grads`` against central differences of :func:`naive_meta_loss`."""
    checked = 0
    for p, g in zip(corrector.parameters(), grads):
        flat, gflat = p.data.view(-1), g.view(-1)
        for i in range(flat.numel()):
            old = flat[i].item()
            flat[i] = old + eps
            up = naive_meta_loss(model, corrector, *problem, LR, moved)
            flat[i] = old - eps
            down = naive_meta_loss(model, corrector, *problem, LR, moved)
            flat[i] = old
            fd = (up - down) / (2 * eps)
            assert gflat[i].item() == pytest.approx(fd, rel=1e-4, abs=1e-9), (p.shape, i)
            checked += 1
    assert checked == sum(p.numel() for p in corrector.parameters())
    assert max(g.abs().max().item() for g in grads) > 1e-4  # the test is not vacuous


def test_theta_gradient_matches_finite_differences():
    model, corrector, x, y, y_prev, xm, ym = tiny_problem()
    meta = lookahead_meta_loss(model, corrector, model(x), y, y_prev, xm, ym, lr_virtual=LR)
    assert meta.item() == pytest.approx(naive_meta_loss(model, corrector, x, y, y_prev, xm, ym, LR), rel=1e-10)
    grads = torch.autograd.grad(meta, list(corrector.parameters()))
    fast_form, _ = meta_gradient(model, corrector, model(x), y, y_prev, xm, ym, lr_virtual=LR)
    for a, b in zip(grads, fast_form):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)  # the step's dot-product form, same gradient
    finite_difference_check(grads, model, corrector, (x, y, y_prev, xm, ym))


@pytest.mark.parametrize("impl", ["double-backward", "jvp"])
def test_last_layer_theta_gradient_matches_finite_differences(impl):
    """scope='last' (either impl: both take the double backward through the classifier
    layer) is the θ-gradient of a look-ahead that moves only that layer, and its meta loss
    is that look-ahead's."""
    model, corrector, x, y, y_prev, xm, ym = tiny_problem(seed=2)
    grads, meta = meta_gradient(
        model, corrector, model(x), y, y_prev, xm, ym, lr_virtual=LR, scope="last", impl=impl, x=x
    )
    moved = {"2.weight", "2.bias"}
    assert meta.item() == pytest.approx(naive_meta_loss(model, corrector, x, y, y_prev, xm, ym, LR, moved), rel=1e-10)
    finite_difference_check(grads, model, corrector, (x, y, y_prev, xm, ym), moved)


def test_step_updates_theta_then_trains_on_the_new_soft_labels():
    model, corrector, x, y, y_prev, xm, ym = tiny_problem(seed=1)
    ref_model, ref_corr = copy.deepcopy(model), copy.deepcopy(corrector)
    opt_w = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_t = torch.optim.SGD(corrector.parameters(), lr=0.3)
    res = mslc_step(model, corrector, x, y, y_prev, xm, ym, opt_w=opt_w, opt_theta=opt_t, lr_virtual=LR)

    meta = lookahead_meta_loss(ref_model, ref_corr, ref_model(x), y, y_prev, xm, ym, lr_virtual=LR)
    g_theta = torch.autograd.grad(meta, list(ref_corr.parameters()))
    with torch.no_grad():
        for p, g in zip(ref_corr.parameters(), g_theta):
            p -= 0.3 * g
    for p, q in zip(corrector.parameters(), ref_corr.parameters()):
        torch.testing.assert_close(p, q)
    logits = ref_model(x)
    with torch.no_grad():
        soft, _, _ = ref_corr(torch.softmax(logits, 1), y, y_prev)
    g_w = torch.autograd.grad(soft_cross_entropy(logits, soft), list(ref_model.parameters()))
    with torch.no_grad():
        for p, g in zip(ref_model.parameters(), g_w):
            p -= 0.1 * g
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q)
    torch.testing.assert_close(res.soft, soft)
    assert res.meta_loss.item() == pytest.approx(meta.item())


def _buffers(m):
    return {k: v.clone() for k, v in m.named_buffers()}


def test_batch_norm_statistics_move_only_with_the_real_forward():
    torch.manual_seed(0)
    model, corrector = SmallCNN(4, 1, width=4), Corrector(hidden=8)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 4, (8,))
    xm, ym = torch.randn(6, 1, 28, 28) * 3 + 1, torch.randint(0, 4, (6,))
    y_prev = torch.softmax(torch.randn(8, 4), 1)

    logits = model(x)
    after_forward = _buffers(model)
    lookahead_meta_loss(model, corrector, logits, y, y_prev, xm, ym, lr_virtual=0.1).backward()
    for k, v in _buffers(model).items():
        torch.testing.assert_close(v, after_forward[k], rtol=0, atol=0)

    model2 = SmallCNN(4, 1, width=4)
    reference = copy.deepcopy(model2)
    reference(x)  # one plain training-mode forward
    mslc_step(
        model2,
        corrector,
        x,
        y,
        y_prev,
        xm,
        ym,
        lr_virtual=0.1,
        opt_w=torch.optim.SGD(model2.parameters(), lr=0.1),
        opt_theta=torch.optim.Adam(corrector.parameters(), 1e-3),
    )
    for (k, v), (_, r) in zip(model2.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(v, r, rtol=0, atol=0, msg=k)


def test_last_layer_scope_moves_only_the_classifier_in_the_virtual_step():
    from mslc.meta_step import last_layer_params, virtual_params

    torch.manual_seed(0)
    model = SmallCNN(10, 1, width=4)
    assert set(last_layer_params(model)) == {"head.3.weight", "head.3.bias"}
    assert len(virtual_params(model, "all")) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="meta scope"):
        virtual_params(model, "middle")


def test_approximations_change_theta_only_as_documented():
    """meta_update=False leaves θ untouched; scope='last' gives a θ-gradient of the same
    shapes that differs from the exact one (it is an approximation)."""
    from mslc.meta_step import meta_gradient

    torch.manual_seed(1)
    model, corrector = SmallCNN(10, 1, width=4), Corrector(8)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    xm, ym = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    y_prev = torch.softmax(torch.randn(16, 10), 1)
    exact, _ = meta_gradient(model, corrector, model(x), y, y_prev, xm, ym, lr_virtual=0.5)
    last, _ = meta_gradient(model, corrector, model(x), y, y_prev, xm, ym, lr_virtual=0.5, scope="last")
    assert all(e.shape == la.shape for e, la in zip(exact, last))
    assert not all(torch.allclose(e, la) for e, la in zip(exact, last))
    before = [p.clone() for p in corrector.parameters()]
    opt_w = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_t = torch.optim.Adam(corrector.parameters(), lr=1e-2)
    res = mslc_step(
        model, corrector, x, y, y_prev, xm, ym, opt_w=opt_w, opt_theta=opt_t, lr_virtual=0.5, meta_update=False
    )
    assert all(torch.equal(a, b) for a, b in zip(before, corrector.parameters()))
    assert torch.isnan(res.meta_loss) and torch.isfinite(res.loss)


def test_forward_mode_meta_gradient_equals_double_backward():
    from mslc.meta_step import meta_gradient

    torch.manual_seed(3)
    model, corrector = SmallCNN(10, 1, width=4).double(), Corrector(8).double()
    x, y = torch.randn(12, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (12,))
    xm, ym = torch.randn(12, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (12,))
    y_prev = torch.softmax(torch.randn(12, 10, dtype=torch.float64), 1)
    db, m1 = meta_gradient(model, corrector, model(x), y, y_prev, xm, ym, lr_virtual=0.3)
    fw, m2 = meta_gradient(model, corrector, model(x), y, y_prev, xm, ym, lr_virtual=0.3, impl="jvp", x=x)
    assert torch.allclose(m1, m2)
    for a, b in zip(db, fw):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def naive_trusted_meta_loss(model, corrector, x, y, y_prev, xm, ym, lr, xt, yt):
    """:func:`naive_meta_loss` whose SGD step also trains on trusted samples ``(xt, yt)``
    with their one-hot labels (the loss: the mean over every row)."""
    m = copy.deepcopy(model)
    logits = m(torch.cat([x, xt]))
    with torch.no_grad():
        soft, _, _ = corrector(torch.softmax(logits[: len(y)], 1), y, y_prev)
    target = torch.cat([soft, F.one_hot(yt, logits.shape[1]).to(soft.dtype)])
    grads = torch.autograd.grad(soft_cross_entropy(logits, target), list(m.parameters()))
    with torch.no_grad():
        for p, g in zip(m.parameters(), grads):
            p -= lr * g
        return F.cross_entropy(m(xm), ym).item()


@pytest.mark.parametrize("impl", ["double-backward", "jvp"])
def test_trusted_samples_take_part_in_the_virtual_and_the_real_step(impl):
    """mslc.trusted_passes: the θ-gradient is that of a look-ahead whose step also trains on
    the trusted samples (finite differences of a naive one), and the real step trains on
    the batch and the trusted samples together; only the batch's rows come back."""
    model, corrector, x, y, y_prev, xm, ym = tiny_problem(seed=4)
    g = torch.Generator().manual_seed(5)
    xt, yt = torch.randn(3, 5, generator=g, dtype=x.dtype), torch.randint(0, 3, (3,), generator=g)
    fixed = F.one_hot(yt, 3).to(x.dtype)
    xa = torch.cat([x, xt])
    grads, meta = meta_gradient(
        model, corrector, model(xa), y, y_prev, xm, ym, lr_virtual=LR, impl=impl, x=xa, fixed=fixed
    )
    assert meta.item() == pytest.approx(
        naive_trusted_meta_loss(model, corrector, x, y, y_prev, xm, ym, LR, xt, yt), rel=1e-10
    )
    eps, checked = 1e-6, 0
    for p, gr in zip(corrector.parameters(), grads):
        flat = p.data.view(-1)
        for i in range(0, flat.numel(), 3):  # every third coordinate: enough to catch a wrong weighting
            old = flat[i].item()
            flat[i] = old + eps
            up = naive_trusted_meta_loss(model, corrector, x, y, y_prev, xm, ym, LR, xt, yt)
            flat[i] = old - eps
            down = naive_trusted_meta_loss(model, corrector, x, y, y_prev, xm, ym, LR, xt, yt)
            flat[i] = old
            assert gr.view(-1)[i].item() == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-9)
            checked += 1
    assert checked > 10 and max(gr.abs().max().item() for gr in grads) > 1e-4
    plain, _ = meta_gradient(model, corrector, model(x), y, y_prev, xm, ym, lr_virtual=LR, impl=impl, x=x)
    assert not all(torch.allclose(a, b) for a, b in zip(grads, plain))  # the trusted rows change it

    ref_model, ref_corr = copy.deepcopy(model), copy.deepcopy(corrector)
    opt_w, opt_t = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(corrector.parameters(), lr=0.3)
    res = mslc_step(
        model, corrector, x, y, y_prev, xm, ym, opt_w=opt_w, opt_theta=opt_t, lr_virtual=LR, impl=impl, trusted=(xt, yt)
    )
    with torch.no_grad():
        for p, gr in zip(ref_corr.parameters(), grads):
            p -= 0.3 * gr
    logits = ref_model(xa)
    with torch.no_grad():
        soft, _, _ = ref_corr(torch.softmax(logits[:6], 1), y, y_prev)
    g_w = torch.autograd.grad(soft_cross_entropy(logits, torch.cat([soft, fixed])), list(ref_model.parameters()))
    with torch.no_grad():
        for p, gr in zip(ref_model.parameters(), g_w):
            p -= 0.1 * gr
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q)
    assert res.soft.shape == (6, 3) and res.y_hat.shape == (6, 3)
    torch.testing.assert_close(res.soft, soft)


def test_lagged_step_with_trusted_samples_reuses_the_virtual_steps_gradient():
    """The lagged step's real gradient is the virtual step's, trusted rows included."""
    model, corrector, x, y, y_prev, xm, ym = tiny_problem(seed=6)
    xt, yt = torch.randn(2, 5, dtype=x.dtype), torch.tensor([0, 2])
    ref = copy.deepcopy(model)
    opt_w, opt_t = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(corrector.parameters(), lr=0.0)
    mslc_step(
        model,
        corrector,
        x,
        y,
        y_prev,
        xm,
        ym,
        opt_w=opt_w,
        opt_theta=opt_t,
        lr_virtual=LR,
        lagged=True,
        trusted=(xt, yt),
    )
    logits = ref(torch.cat([x, xt]))
    with torch.no_grad():
        soft, _, _ = corrector(torch.softmax(logits[:6], 1), y, y_prev)
    target = torch.cat([soft, F.one_hot(yt, 3).to(soft.dtype)])
    g_w = torch.autograd.grad(soft_cross_entropy(logits, target), list(ref.parameters()))
    with torch.no_grad():
        for p, gr in zip(ref.parameters(), g_w):
            p -= 0.1 * gr
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)


def test_the_phase_timer_times_each_labelled_phase_and_costs_nothing_uninstalled():
    from mslc import meta_step
    from mslc.meta_step import PHASES, PhaseTimer, timing_phases

    model, corrector, x, y, y_prev, xm, ym = tiny_problem(seed=2)
    opt_w = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_t = torch.optim.SGD(corrector.parameters(), lr=0.3)

    def step(grad_impl):
        mslc_step(model, corrector, x, y, y_prev, xm, ym, opt_w=opt_w, opt_theta=opt_t, lr_virtual=LR, impl=grad_impl)

    with timing_phases(PhaseTimer(torch.device("cpu"))) as timer:
        step("jvp")
        step("double-backward")
    assert meta_step._TIMER is None  # uninstalled on the way out: a step outside records nothing
    got = timer.totals_ms()
    assert set(got) == set(PHASES) and all(v > 0 for v in got.values()), got
    n = len(timer.marks)
    assert [label for label, _, _ in timer.marks].count("step/jvp") == 1  # forward mode's product, once
    step("jvp")
    assert len(timer.marks) == n
