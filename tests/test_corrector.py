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
    y_hat2[torch.arange(N), other], y_hat2[torch.arange(N), y] = y_hat[torch.arange(N), y], y_hat[torch.arange(N), other]
    _, alpha2, _ = c(y_hat2, other, y_prev)
    assert not torch.allclose(alpha, alpha2)


def test_class_aware_corrector_needs_the_class_count():
    import pytest

    with pytest.raises(ValueError, match="num_classes"):
        Corrector(kind="class")
    with pytest.raises(ValueError, match="corrector kind"):
        Corrector(kind="pairs", num_classes=3)
