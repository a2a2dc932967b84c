"""The baselines against naive references, and on planted noise doing what their papers say."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mslc import baselines as B
from mslc.corrector import LossMLP
from mslc.noise import corrupt, make_transition


def blob_sampler(spread: float, seed: int = 0):
    """``draw(n) → (x (n, 8) float32, y (n,) int64)``: 4 Gaussian classes, centres ~ N(0, spread²)."""
    g = np.random.default_rng(seed)
    centers = g.normal(0, spread, (4, 8))

    def draw(n):
        y = np.arange(n) % 4
        return torch.from_numpy((centers[y] + g.normal(0, 1, (n, 8))).astype(np.float32)), torch.from_numpy(y)

    return draw


@pytest.fixture(scope="module")
def blobs():
    """4 well-separated Gaussian classes in 8-D: 4000 noisy-train, 200 clean meta/trusted."""
    draw = blob_sampler(4.0)
    x, y = draw(4000)
    xm, ym = draw(200)
    return x, y, xm, ym


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))


def test_gce_matches_its_formula_and_limits():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 5), torch.randint(0, 5, (6,))
    p_y = F.softmax(logits, 1)[torch.arange(6), y]
    assert torch.allclose(B.gce_loss(logits, y, 0.7), ((1 - p_y**0.7) / 0.7).mean())
    assert torch.allclose(B.gce_loss(logits, y, 1.0), (1 - p_y).mean())  # MAE
    assert torch.allclose(B.gce_loss(logits, y, 1e-4), F.cross_entropy(logits, y), atol=1e-3)  # → CE
    with pytest.raises(ValueError):
        B.gce_loss(logits, y, 0.0)


def test_gce_gives_confidently_wrong_samples_less_gradient_than_ce():
    y = torch.tensor([0, 0])

    def grad_ratio(loss_fn) -> float:
        logits = torch.tensor([[4.0, 0.0], [0.0, 4.0]], requires_grad=True)  # sample 1 contradicts its label
        loss_fn(logits).backward()
        g = logits.grad.norm(dim=1)
        return float(g[1] / g[0])

    ce = grad_ratio(lambda z: F.cross_entropy(z, y))
    gce = grad_ratio(lambda z: B.gce_loss(z, y, 0.7))
    assert gce < ce / 5  # GCE's per-sample gradient is CE's times p_y^q


def test_bootstrap_and_dynamic_bootstrap_targets():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    y = torch.tensor([1, 1])
    soft = B.bootstrap_target(y, probs, 0.95, hard=False)
    assert torch.allclose(soft[0], 0.95 * torch.tensor([0.0, 1, 0]) + 0.05 * probs[0])
    hard = B.bootstrap_target(y, probs, 0.8, hard=True)
    assert torch.allclose(hard[1], torch.tensor([0.0, 0.8, 0.2]))
    dyn = B.dynamic_bootstrap_target(y, probs, torch.tensor([0.0, 0.9]))
    assert torch.allclose(dyn, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.1, 0.9]]))
    assert torch.allclose(dyn.sum(1), torch.ones(2))


def test_glc_recovers_a_planted_transition_matrix(blobs):
    x, y, xm, ym = blobs
    t = make_transition("pairflip", 4, 0.3)
    noisy = torch.from_numpy(corrupt(y.numpy(), t, seed=1).noisy)
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):  # p̂(ỹ | x) from the noisy labels
        opt.zero_grad()
        F.cross_entropy(model(x), noisy).backward()
        opt.step()
    with torch.no_grad():
        c_hat = B.glc_estimate(F.softmax(model(xm), 1), ym, 4)
    assert np.abs(c_hat - t).max() < 0.1 and np.allclose(c_hat.sum(1), 1)
    # the corrected loss with the true matrix is lowest for the clean classifier's logits
    clean_logits = 10 * F.one_hot(y[:400], 4).float()
    wrong_logits = 10 * F.one_hot((y[:400] + 1) % 4, 4).float()
    c = torch.from_numpy(t).float()
    assert B.glc_loss(clean_logits, noisy[:400], c) < B.glc_loss(wrong_logits, noisy[:400], c)


def test_joint_optimization_loss_terms():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    target = torch.tensor([[0.8, 0.1, 0.1], [0.0, 1.0, 0.0]])
    prior = torch.full((3,), 1 / 3)
    p = F.softmax(logits, 1)
    l_c = -(target * p.log()).sum(1).mean()
    l_p = (prior * (prior.log() - p.mean(0).log())).sum()
    l_e = -(p * p.log()).sum(1).mean()
    assert torch.allclose(B.joint_opt_loss(logits, target, prior, alpha=1.2, beta=0.8), l_c + 1.2 * l_p + 0.8 * l_e)
    collapsed = torch.tensor([[5.0, 0, 0], [5.0, 0, 0]])  # every prediction on one class: the prior term objects
    assert (
        B.joint_opt_loss(collapsed, target, prior, alpha=1, beta=0)
        > B.joint_opt_loss(collapsed, target, prior, alpha=0, beta=0) + 0.5
    )


def test_beta_mixture_separates_clean_from_noisy_losses(blobs):
    """Per-sample CE losses of a model trained briefly on 40%-noisy labels: the mixture's
    noisy component holds the flipped samples."""
    x, y, _, _ = blobs
    noisy_labels = corrupt(y.numpy(), make_transition("sym-exclusive", 4, 0.4), seed=2)
    yn = torch.from_numpy(noisy_labels.noisy)
    model = mlp(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(40):  # early: the clean structure is learned, the flips not yet memorized
        opt.zero_grad()
        F.cross_entropy(model(x), yn).backward()
        opt.step()
    with torch.no_grad():
        losses = F.cross_entropy(model(x), yn, reduction="none").numpy()
    bmm = B.BetaMixture().fit(B.BetaMixture.scale(losses))
    post = bmm.posterior_noisy(B.BetaMixture.scale(losses))
    flipped = noisy_labels.is_noisy
    assert (post[flipped] > 0.5).mean() > 0.9 and (post[~flipped] < 0.5).mean() > 0.9


def test_mwnet_gives_flipped_samples_lower_weights(blobs):
    x, y, xm, ym = blobs
    noisy = corrupt(y.numpy(), make_transition("sym-exclusive", 4, 0.4), seed=3)
    yn = torch.from_numpy(noisy.noisy)
    model, vnet = mlp(2), LossMLP(100)
    with torch.no_grad():
        w0 = vnet(torch.linspace(0, 4, 9))
    assert w0.min() > 0.8 * w0.max()  # V starts nearly flat: the difference below is learned
    opt_w = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt_v = torch.optim.Adam(vnet.parameters(), lr=1e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    for step in range(150):
        idx = torch.randint(0, len(y), (100,), generator=g)
        midx = torch.randint(0, len(ym), (100,), generator=g)
        res = B.mwnet_step(model, vnet, x[idx], yn[idx], xm[midx], ym[midx], opt_w=opt_w, opt_v=opt_v, lr_virtual=0.1)
    with torch.no_grad():
        losses = F.cross_entropy(model(x), yn, reduction="none")
        w = vnet(losses).numpy()
    flipped = noisy.is_noisy
    assert w[flipped].mean() < 0.5 * w[~flipped].mean()
    assert torch.isfinite(res.meta_loss) and res.alpha.shape == (100,)


@pytest.fixture(scope="module")
def hard_blobs():
    """Overlapping classes, 400 training samples with 40% flips, an MLP that can memorize them."""
    draw = blob_sampler(1.5)
    x, y = draw(400)
    xt, yt = draw(2000)
    xm, ym = draw(100)
    nz = corrupt(y.numpy(), make_transition("sym-exclusive", 4, 0.4), seed=5)
    return x, y, torch.from_numpy(nz.noisy), torch.from_numpy(nz.is_noisy), xt, yt, xm, ym


def wide_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 4))


def fit(loss_fn, x, steps=600, model=None, label_update=None):
    """Full-batch Adam on ``loss_fn(logits, labels)``; ``label_update`` refreshes the labels every 20 steps."""
    model = model or wide_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    labels = None
    for s in range(steps):
        opt.zero_grad()
        loss_fn(model(x), labels).backward()
        opt.step()
        if label_update is not None and s % 20 == 19:
            with torch.no_grad():
                labels = label_update(model(x))
    return model


def memorized_and_test_acc(model, x, noisy, flipped, xt, yt):
    with torch.no_grad():
        return (
            float((model(x).argmax(1)[flipped] == noisy[flipped]).float().mean()),
            float((model(xt).argmax(1) == yt).float().mean()),
        )


@pytest.fixture(scope="module")
def ce_result(hard_blobs):
    """(fraction of flipped labels memorized, clean test accuracy) of plain CE."""
    x, y, yn, flip, xt, yt, _, _ = hard_blobs
    return memorized_and_test_acc(fit(lambda z, _: F.cross_entropy(z, yn), x), x, yn, flip, xt, yt)


def test_gce_memorizes_fewer_flipped_labels_than_ce(hard_blobs, ce_result):
    x, y, yn, flip, xt, yt, _, _ = hard_blobs
    ce = ce_result
    gce = memorized_and_test_acc(fit(lambda z, _: B.gce_loss(z, yn, 0.7), x), x, yn, flip, xt, yt)
    assert ce[0] > 0.95 and gce[0] < 0.5  # CE fits every flipped label, GCE few of them
    assert gce[1] > ce[1] + 0.1


def test_joint_optimization_memorizes_fewer_flipped_labels_than_ce(hard_blobs, ce_result):
    x, y, yn, flip, xt, yt, _, _ = hard_blobs
    prior = torch.full((4,), 0.25)
    onehot = F.one_hot(yn, 4).float()
    ce = ce_result
    jo_model = fit(
        lambda z, lab: B.joint_opt_loss(z, onehot if lab is None else lab, prior),
        x,
        label_update=lambda z: F.softmax(z, 1),
    )
    jo = memorized_and_test_acc(jo_model, x, yn, flip, xt, yt)
    assert jo[0] < ce[0] - 0.2 and jo[1] > ce[1] + 0.03


def test_fine_tuning_on_the_clean_set_undoes_some_of_the_noise(hard_blobs, ce_result):
    x, y, yn, flip, xt, yt, xm, ym = hard_blobs
    model = fit(lambda z, _: F.cross_entropy(z, yn), x)
    before = memorized_and_test_acc(model, x, yn, flip, xt, yt)[1]
    assert before == pytest.approx(ce_result[1])
    fit(lambda z, _: F.cross_entropy(z, ym), xm, steps=100, model=model)
    after = memorized_and_test_acc(model, x, yn, flip, xt, yt)[1]
    assert after > before + 0.05


def test_hard_bootstrap_stops_short_of_the_given_label_where_the_model_disagrees():
    """Reed et al.: the target keeps 1 − β on the model's own class, so a sample the model
    confidently puts elsewhere is never pushed all the way to its (possibly wrong) label."""
    z = torch.zeros(1, 3, requires_grad=True)
    opt = torch.optim.SGD([z], lr=1.0)
    for _ in range(2000):
        opt.zero_grad()
        target = B.bootstrap_target(torch.tensor([0]), torch.tensor([[0.1, 0.1, 0.8]]), 0.8, hard=True)
        (-(target * F.log_softmax(z, 1)).sum()).backward()
        opt.step()
    p = F.softmax(z.detach(), 1)[0]
    assert abs(float(p[0]) - 0.8) < 0.01 and abs(float(p[2]) - 0.2) < 0.01
