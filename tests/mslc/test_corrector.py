import torch
import torch.nn.functional as F

from mslc.corrector import Corrector, soft_labels
from mslc.meta_step import soft_cross_entropy

torch.manual_seed(0)
N, C = 7, 5


def _inputs():
    y = torch.randint(0, C, (N,))
    y_hat = torch.softmax(torch.randn(N, C), 1)
    y_prev = torch.softmax(torch.randn(N, C), 1)
    return y, y_hat, y_prev, torch.rand(N), torch.rand(N)


def test_soft_labels_matches_a_naive_loop():
    y, y_hat, y_prev, a, b = _inputs()
    got = soft_labels(y, y_hat, y_prev, a, b)
    for i in range(N):
        for c in range(C):
            ref = a[i] * (1.0 if c == y[i] else 0.0) + (1 - a[i]) * (b[i] * y_prev[i, c] + (1 - b[i]) * y_hat[i, c])
            assert torch.isclose(got[i, c], ref, atol=1e-7)
    torch.testing.assert_close(got.sum(1), torch.ones(N))


def test_extremes_of_alpha_and_beta():
    y, y_hat, y_prev, _, _ = _inputs()
    one, zero = torch.ones(N), torch.zeros(N)
    torch.testing.assert_close(soft_labels(y, y_hat, y_prev, one, zero), F.one_hot(y, C).float())
    torch.testing.assert_close(soft_labels(y, y_hat, y_prev, zero, one), y_prev)
    torch.testing.assert_close(soft_labels(y, y_hat, y_prev, zero, zero), y_hat)


def test_corrector_feeds_the_paper_losses_to_its_nets():
    y, y_hat, y_prev, _, _ = _inputs()
    c = Corrector(hidden=8)
    soft, alpha, beta = c(y_hat, y, y_prev)
    l_alpha = -torch.log(y_hat[torch.arange(N), y])
    l_beta = -(y_prev * y_hat.log()).sum(1)
    torch.testing.assert_close(alpha, c.alpha_net(l_alpha))
    torch.testing.assert_close(beta, c.beta_net(l_beta))
    torch.testing.assert_close(soft, soft_labels(y, y_hat, y_prev, alpha, beta))
    assert ((alpha > 0) & (alpha < 1)).all()


def test_hard_mode_equals_the_authors_three_hard_terms():
    y, _, y_prev, _, _ = _inputs()
    logits = torch.randn(N, C)
    y_hat = torch.softmax(logits, 1)
    c = Corrector(hidden=8, loss_mode="hard")
    soft, alpha, beta = c(y_hat, y, y_prev)
    ce = lambda t: F.cross_entropy(logits, t, reduction="none")  # noqa: E731
    three = alpha * ce(y) + (1 - alpha) * beta * ce(y_prev.argmax(1)) + (1 - alpha) * (1 - beta) * ce(y_hat.argmax(1))
    torch.testing.assert_close(soft_cross_entropy(logits, soft), three.mean())
    torch.testing.assert_close(beta, c.beta_net(F.cross_entropy(logits, y_prev.argmax(1), reduction="none")))


def test_fixed_beta_ablation_uses_the_constant_and_leaves_beta_net_without_gradient():
    from mslc.meta_step import meta_gradient
    from mslc.models import SmallCNN

    torch.manual_seed(0)
    model, corrector = SmallCNN(10, 1, width=4), Corrector(8, fixed_beta=0.4)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    y_prev = torch.softmax(torch.randn(8, 10), 1)
    _, _, beta = corrector(torch.softmax(model(x), 1), y, y_prev)
    assert torch.allclose(beta, torch.full((8,), 0.4))
    grads, _ = meta_gradient(model, corrector, model(x), y, y_prev, x, y, lr_virtual=0.5)
    names = [n for n, p in corrector.named_parameters() if p.requires_grad]
    for n, g in zip(names, grads):
        assert (g.abs().sum() == 0) == n.startswith("beta_net"), n


def test_while_alpha_is_at_least_a_half_the_given_label_stays_the_arg_max():
    """Eq. 6's structural limit: ỹ_y ≥ α and every other class gets ≤ 1 − α, so with
    α ≥ 0.5 arg-max ỹ is the given label whatever ŷ and ỹ_prev say (ties aside)."""
    g = torch.Generator().manual_seed(3)
    n, c = 2000, 6
    y = torch.randint(0, c, (n,), generator=g)
    wrong = (y + 1 + torch.randint(0, c - 1, (n,), generator=g)) % c  # predictions sure of another class
    y_hat = 0.02 + 0.98 * F.one_hot(wrong, c).double()
    y_hat = y_hat / y_hat.sum(1, keepdim=True)
    alpha = 0.5 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)
    beta = torch.rand(n, generator=g, dtype=torch.float64)
    soft = soft_labels(y, y_hat, y_hat, alpha, beta)
    assert (soft[torch.arange(n), y] >= alpha - 1e-12).all()
    assert (soft.argmax(1) == y).all()
    below = soft_labels(y, y_hat, y_hat, torch.full((n,), 0.3, dtype=torch.float64), beta)
    assert (below.argmax(1) == wrong).all()  # below a half it can move


def test_class_aware_corrector_sees_the_given_class_and_the_prediction():
    y, y_hat, y_prev, _, _ = _inputs()
    c = Corrector(hidden=8, kind="class", num_classes=C)
    soft, alpha, beta = c(y_hat, y, y_prev)
    l_alpha = -torch.log(y_hat[torch.arange(N), y])
    l_beta = -(y_prev * y_hat.log()).sum(1)
    onehot = F.one_hot(y, C).float()
    torch.testing.assert_close(alpha, c.alpha_net(l_alpha, onehot, y_hat))
    torch.testing.assert_close(beta, c.beta_net(l_beta, onehot, y_hat))
    torch.testing.assert_close(soft, soft_labels(y, y_hat, y_prev, alpha, beta))
    # the same loss under another given class gives another α: the class is an input
    other = (y + 1) % C
    y_hat2 = y_hat.clone()
    y_hat2[torch.arange(N), other], y_hat2[torch.arange(N), y] = (
        y_hat[torch.arange(N), y],
        y_hat[torch.arange(N), other],
    )
    _, alpha2, _ = c(y_hat2, other, y_prev)
    assert not torch.allclose(alpha, alpha2)


def test_class_aware_corrector_needs_the_class_count():
    import pytest

    with pytest.raises(ValueError, match="num_classes"):
        Corrector(kind="class")
    with pytest.raises(ValueError, match="corrector kind"):
        Corrector(kind="pairs", num_classes=3)


def test_transition_posterior_matches_bayes_rule_by_hand():
    from mslc.corrector import transition_posterior

    y, y_hat, _, _, _ = _inputs()
    t = torch.softmax(torch.randn(C, C), 1)
    got = transition_posterior(y_hat, y, t)
    for i in range(N):
        evidence = [y_hat[i, c] * t[c, y[i]] for c in range(C)]
        for c in range(C):
            assert torch.isclose(got[i, c], evidence[c] / sum(evidence), atol=1e-7)
    # no knowledge of the noise (constant columns) leaves the prediction as it is
    torch.testing.assert_close(transition_posterior(y_hat, y, torch.full((C, C), 1.0 / C)), y_hat)
    # no evidence at all for a given label: the prediction, not a row of zeros
    zero_col = t.clone()
    zero_col[:, int(y[0])] = 0.0
    torch.testing.assert_close(transition_posterior(y_hat, y, zero_col)[0], y_hat[0])


def test_training_on_the_posterior_takes_glc_forward_correction_gradient():
    """With α = β = 0 the transition-aware corrector's soft labels are the posterior π, and
    the soft cross-entropy to π (detached) has the gradient of GLC's corrected loss
    −log (softmax(z) T)_y: both are p − π."""
    from mslc.baselines import glc_loss
    from mslc.corrector import transition_posterior

    y, _, _, _, _ = _inputs()
    logits = torch.randn(N, C, dtype=torch.float64, requires_grad=True)
    t = torch.softmax(torch.randn(C, C, dtype=torch.float64), 1)
    p = torch.softmax(logits, 1)
    target = transition_posterior(p.detach(), y, t)
    (g_soft,) = torch.autograd.grad(soft_cross_entropy(logits, target), logits)
    (g_glc,) = torch.autograd.grad(glc_loss(logits, y, t), logits)
    torch.testing.assert_close(g_soft, g_glc)

    c = Corrector(hidden=8, fixed_beta=0.0, num_classes=C, transition=True).double()
    c.set_transition(t)
    with torch.no_grad():
        c.alpha_net.fc2.bias.fill_(-60.0)  # α = σ(−60) ≈ 0
    soft, alpha, _ = c(p.detach(), y, torch.softmax(torch.randn(N, C, dtype=torch.float64), 1))
    assert float(alpha.detach().max()) < 1e-20
    torch.testing.assert_close(soft, target)


def test_transition_is_part_of_the_state_only_when_asked_for():
    plain = Corrector(hidden=4, kind="class", num_classes=C)
    assert "transition" not in plain.state_dict() and plain.transition is None
    aware = Corrector(hidden=4, kind="class", num_classes=C, transition=True)
    t = torch.softmax(torch.randn(C, C), 1)
    aware.set_transition(t)
    other = Corrector(hidden=4, kind="class", num_classes=C, transition=True)
    other.load_state_dict(aware.state_dict())
    torch.testing.assert_close(other.transition, t)
    import pytest

    with pytest.raises(ValueError, match="shape"):
        aware.set_transition(torch.ones(C + 1, C + 1))
    with pytest.raises(ValueError, match="without transition"):
        plain.set_transition(t)
    with pytest.raises(ValueError, match="num_classes"):
        Corrector(hidden=4, transition=True)


def test_alpha_prior_prediction_starts_alpha_at_the_models_probability_of_the_given_label():
    """mslc.alpha_prior=prediction: α = σ(logit ŷ_y + α_net's logit), so with α_net's output
    at 0 α is ŷ_y (trust the given label as much as the model does), for both kinds."""
    import pytest

    y, y_hat, y_prev, _, _ = _inputs()
    p_given = y_hat[torch.arange(N), y]
    for kind in ("loss", "class"):
        c = Corrector(hidden=8, kind=kind, num_classes=C, alpha_prior="prediction")
        with torch.no_grad():
            c.alpha_net.fc2.weight.zero_()
            c.alpha_net.fc2.bias.zero_()
        _, alpha, _ = c(y_hat, y, y_prev)
        torch.testing.assert_close(alpha, p_given)
        with torch.no_grad():
            c.alpha_net.fc2.bias.fill_(1.0)
        _, alpha, _ = c(y_hat, y, y_prev)
        torch.testing.assert_close(torch.logit(alpha), torch.logit(p_given) + 1.0)
    with pytest.raises(ValueError, match="alpha_prior"):
        Corrector(hidden=8, alpha_prior="given")


def test_posterior_mix_trains_on_a_blend_and_hands_the_bank_the_corrected_labels():
    """mslc.posterior_mix=λ: the classifier's targets are (1 − λ)·ỹ + λ·π (π: the posterior
    under the transition, GLC's target), the trusted rows stay one-hot, and ỹ (what the bank
    keeps and the run exports) is unchanged; λ = 0 is the paper's target."""
    import pytest

    from mslc.corrector import transition_posterior
    from mslc.meta_step import batch_targets

    torch.manual_seed(1)
    y, y_hat, y_prev, _, _ = _inputs()
    logits = torch.log(y_hat)
    t = torch.softmax(3 * torch.randn(C, C), 1)
    fixed = F.one_hot(torch.tensor([1, 2]), C).float()
    results = {}
    for lam in (0.0, 0.3):
        torch.manual_seed(0)
        c = Corrector(hidden=8, kind="class", num_classes=C, transition=True, posterior_mix=lam)
        c.set_transition(t)
        results[lam] = batch_targets(c, logits, y, y_prev, fixed)
    (t0, soft0, _, _), (t3, soft3, _, _) = results[0.0], results[0.3]
    torch.testing.assert_close(soft3, soft0)
    torch.testing.assert_close(t0[:N], soft0)
    pi = transition_posterior(torch.softmax(logits, 1), y, t)
    torch.testing.assert_close(t3[:N], 0.7 * soft3 + 0.3 * pi)
    torch.testing.assert_close(t3[N:], fixed)
    torch.testing.assert_close(t3.sum(1), torch.ones(N + 2))
    with pytest.raises(ValueError, match="posterior_mix"):
        Corrector(hidden=8, posterior_mix=1.5)


def test_transition_concentration_tells_class_flips_from_spread_noise():
    from mslc.corrector import transition_concentration

    def sym(rate):
        return (1 - rate) * torch.eye(C) + rate * (1 - torch.eye(C)) / (C - 1)

    flips = 0.6 * torch.eye(C) + 0.4 * torch.roll(torch.eye(C), 1, dims=1)  # class c → c + 1
    assert abs(transition_concentration(sym(0.4)) - 1 / (C - 1)) < 1e-9
    assert abs(transition_concentration(flips) - 1.0) < 1e-9
    assert transition_concentration(torch.eye(C)) == 0.0
    # a naive loop on a random matrix
    t = torch.softmax(torch.randn(C, C), 1)
    top = sum(max(float(t[c, j]) for j in range(C) if j != c) for c in range(C))
    total = sum(float(t[c, j]) for c in range(C) for j in range(C) if j != c)
    assert abs(transition_concentration(t) - top / total) < 1e-9


def test_the_blend_starts_only_once_the_estimated_noise_is_concentrated_enough():
    """mslc.mix_min_concentration: the blend's share is 0 until set_transition finds the
    estimate's concentration at least that high; it lives in the state dict (a resumed run
    keeps it), and a corrector without a blend has no such entry."""
    flips = 0.6 * torch.eye(C) + 0.4 * torch.roll(torch.eye(C), 1, dims=1)
    spread = 0.6 * torch.eye(C) + 0.4 * (1 - torch.eye(C)) / (C - 1)
    c = Corrector(hidden=4, kind="class", num_classes=C, transition=True, posterior_mix=0.75, mix_min_concentration=0.5)
    assert float(c.mix) == 0.0
    c.set_transition(spread)
    assert float(c.mix) == 0.0
    c.set_transition(flips)
    assert float(c.mix) == 0.75
    other = Corrector(
        hidden=4, kind="class", num_classes=C, transition=True, posterior_mix=0.75, mix_min_concentration=0.5
    )
    other.load_state_dict(c.state_dict())
    assert float(other.mix) == 0.75
    assert "mix" not in Corrector(hidden=4, kind="class", num_classes=C, transition=True).state_dict()
