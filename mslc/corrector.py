"""The label corrector: α_net, β_net and the soft-label formula (paper Eq. 6).

Two kinds of corrector share one interface (:class:`Corrector`):

``loss``  – the paper's: α and β are MLPs of one per-sample loss each.
``class`` – beyond the paper: α and β also see the given class and the current
            prediction (an MLP of ``[loss, onehot(y), ŷ]``). A loss-only α cannot tell a
            flipped T-shirt labelled Shirt from a hard clean Shirt (both have a high
            loss); with the (given class, predicted class) pair in its input α can learn
            which confusions the noise makes, as a transition matrix would (cf. CMW-Net,
            which conditions its weighting net on class features).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LOSS_MODES = ("soft", "hard")
CORRECTORS = ("loss", "class")
_EPS = 1e-12


def soft_labels(
    y: torch.Tensor,
    y_hat: torch.Tensor,
    y_prev: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
) -> torch.Tensor:
    """Paper Eq. 6: ``ỹ = α·onehot(y) + (1 − α)·(β·ỹ_prev + (1 − β)·ŷ)``.

    Parameters
    ----------
    y : (n,) int64
        Given (noisy) labels.
    y_hat : (n, C)
        Current predictions, rows sum to 1.
    y_prev : (n, C)
        Previous soft labels, rows sum to 1.
    alpha, beta : (n,)
        Per-sample weights in [0, 1].

    Returns
    -------
    (n, C) soft labels, rows sum to 1.
    """
    onehot = F.one_hot(y, y_hat.shape[1]).to(y_hat.dtype)
    a = alpha.reshape(-1, 1)
    b = beta.reshape(-1, 1)
    return a * onehot + (1.0 - a) * (b * y_prev + (1.0 - b) * y_hat)


def target_cross_entropy(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample ``CE(probs, target) = −Σ_c target_c · log probs_c``; (n, C) → (n,)."""
    return -(target * probs.clamp_min(_EPS).log()).sum(1)


def argmax_onehot(p: torch.Tensor) -> torch.Tensor:
    """(n, C) → (n, C) one-hot of each row's arg-max."""
    return F.one_hot(p.argmax(1), p.shape[1]).to(p.dtype)


class LossMLP(nn.Module):
    """A 1 → hidden → 1 MLP with ReLU and a sigmoid output, fed a per-sample loss."""

    def __init__(self, hidden: int = 100) -> None:
        super().__init__()
        self.fc1 = nn.Linear(1, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, loss: torch.Tensor) -> torch.Tensor:
        """(n,) loss values → (n,) weights in (0, 1)."""
        h = F.relu(self.fc1(loss.reshape(-1, 1)))
        return torch.sigmoid(self.fc2(h)).reshape(-1)


class ClassMLP(nn.Module):
    """A (1 + 2C) → hidden → 1 MLP with ReLU and a sigmoid output, fed a per-sample loss,
    the one-hot given class and the prediction."""

    def __init__(self, num_classes: int, hidden: int = 100) -> None:
        super().__init__()
        self.fc1 = nn.Linear(1 + 2 * num_classes, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, loss: torch.Tensor, onehot: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        """(n,) losses, (n, C) one-hot given labels, (n, C) predictions → (n,) weights in (0, 1)."""
        h = F.relu(self.fc1(torch.cat([loss.reshape(-1, 1), onehot, y_hat], 1)))
        return torch.sigmoid(self.fc2(h)).reshape(-1)


class Corrector(nn.Module):
    """θ = (θ_α, θ_β): makes soft labels from given labels, predictions and past labels.

    ``loss_mode='soft'`` is the paper (Eq. 4/6 with ``ℓ_β = CE(ŷ, ỹ_prev)``);
    ``loss_mode='hard'`` is the authors' code: ``ŷ`` and ``ỹ_prev`` are replaced by
    one-hots of their arg-max, which makes the soft cross-entropy equal to their
    three hard-label terms ``α·CE(f, y) + (1−α)β·CE(f, argmax ỹ_prev) +
    (1−α)(1−β)·CE(f, argmax f)`` (cross-entropy is linear in its target).

    ``kind='class'`` (needs ``num_classes``) feeds α_net and β_net the given class and
    the prediction as well (:class:`ClassMLP`); ``kind='loss'`` is the paper's.
    """

    def __init__(self, hidden: int = 100, loss_mode: str = "soft", fixed_beta: float | None = None, *,
                 kind: str = "loss", num_classes: int | None = None) -> None:
        super().__init__()
        if loss_mode not in LOSS_MODES:
            raise ValueError(f"loss_mode must be one of {LOSS_MODES}, got {loss_mode!r}")
        if fixed_beta is not None and not 0.0 <= fixed_beta <= 1.0:
            raise ValueError(f"fixed_beta must be in [0, 1], got {fixed_beta}")
        if kind not in CORRECTORS:
            raise ValueError(f"corrector kind must be one of {CORRECTORS}, got {kind!r}")
        if kind == "class" and (num_classes is None or num_classes < 2):
            raise ValueError(f"the class-aware corrector needs num_classes >= 2, got {num_classes}")
        self.loss_mode = loss_mode
        self.fixed_beta = fixed_beta  # the β ablation: a constant instead of β_net
        self.kind = kind
        if kind == "loss":
            self.alpha_net, self.beta_net = LossMLP(hidden), LossMLP(hidden)
        else:
            self.alpha_net, self.beta_net = ClassMLP(num_classes, hidden), ClassMLP(num_classes, hidden)

    def weights(self, loss_alpha: torch.Tensor, loss_beta: torch.Tensor, onehot: torch.Tensor,
                y_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha (n,), beta (n,))`` from the two losses (n,), the one-hot given labels (n, C)
        and the predictions (n, C)."""
        def net(mlp: nn.Module, loss: torch.Tensor) -> torch.Tensor:
            return mlp(loss) if self.kind == "loss" else mlp(loss, onehot, y_hat)

        alpha = net(self.alpha_net, loss_alpha)
        beta = net(self.beta_net, loss_beta) if self.fixed_beta is None else torch.full_like(alpha, self.fixed_beta)
        return alpha, beta

    def forward(
        self, y_hat: torch.Tensor, y: torch.Tensor, y_prev: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(soft (n, C), alpha (n,), beta (n,))``; inputs are detached."""
        y_hat = y_hat.detach()
        y_prev = y_prev.detach().to(y_hat.dtype)
        if self.loss_mode == "hard":
            y_hat_t, y_prev_t = argmax_onehot(y_hat), argmax_onehot(y_prev)
        else:
            y_hat_t, y_prev_t = y_hat, y_prev
        onehot = F.one_hot(y, y_hat.shape[1]).to(y_hat.dtype)
        loss_alpha = target_cross_entropy(y_hat, onehot)
        loss_beta = target_cross_entropy(y_hat, y_prev_t)
        alpha, beta = self.weights(loss_alpha, loss_beta, onehot, y_hat)
        return soft_labels(y, y_hat_t, y_prev_t, alpha, beta), alpha, beta
