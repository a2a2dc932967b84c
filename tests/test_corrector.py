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
