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

from mslc.options import ALPHA_PRIORS, CORRECTORS, LOSS_MODES  # noqa: F401  (re-exported: the names live there, torch-free)

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


def transition_concentration(transition: torch.Tensor) -> float:
    """How concentrated a noise transition's off-diagonal mass is: ``Σ_c max_{j≠c} T[c, j] /
    Σ_{c≠j} T[c, j]``, 1 when each class is mislabelled as one other class only (class flips,
    pair-flip), 1/(C − 1) when its mislabels spread evenly (symmetric noise); 0 without any.

    Parameters
    ----------
    transition : (C, C) ``T[true, given]``, rows sum to 1.
    """
    t = torch.as_tensor(transition, dtype=torch.float64).clone()
    t.fill_diagonal_(0.0)
    total = float(t.sum())
    return float(t.max(1).values.sum()) / total if total > 0 else 0.0


def transition_posterior(y_hat: torch.Tensor, y: torch.Tensor, transition: torch.Tensor) -> torch.Tensor:
    """The posterior of the true class given the prediction and the given label under a
    noise transition: ``π_ic ∝ ŷ_ic · T[c, y_i]`` (Bayes, with ŷ as the prior over true classes).

    Parameters
    ----------
    y_hat : (n, C)
        Predictions, rows sum to 1.
    y : (n,) int64
        Given (noisy) labels.
    transition : (C, C)
        ``T[i, j]``: the probability that a sample of true class ``i`` is given label ``j``.
        With every column constant (no knowledge of the noise) ``π = ŷ``.

    Returns
    -------
    (n, C) rows sum to 1 (``ŷ`` where a row's evidence is all zero).
    """
    post = y_hat * transition.to(y_hat.dtype)[:, y].t()
    z = post.sum(1, keepdim=True)
    return torch.where(z > 0, post / z.clamp_min(_EPS), y_hat)


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

    def logit(self, loss: torch.Tensor) -> torch.Tensor:
        """(n,) loss values → (n,) pre-sigmoid outputs."""
        return self.fc2(F.relu(self.fc1(loss.reshape(-1, 1)))).reshape(-1)

    def forward(self, loss: torch.Tensor) -> torch.Tensor:
        """(n,) loss values → (n,) weights in (0, 1)."""
        return torch.sigmoid(self.logit(loss))


class ClassMLP(nn.Module):
    """A (1 + 2C) → hidden → 1 MLP with ReLU and a sigmoid output, fed a per-sample loss,
    the one-hot given class and the prediction."""

    def __init__(self, num_classes: int, hidden: int = 100) -> None:
        super().__init__()
        self.fc1 = nn.Linear(1 + 2 * num_classes, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def logit(self, loss: torch.Tensor, onehot: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        """(n,) losses, (n, C) one-hot given labels, (n, C) predictions → (n,) pre-sigmoid outputs."""
        return self.fc2(F.relu(self.fc1(torch.cat([loss.reshape(-1, 1), onehot, y_hat], 1)))).reshape(-1)

    def forward(self, loss: torch.Tensor, onehot: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        """(n,) losses, (n, C) one-hot given labels, (n, C) predictions → (n,) weights in (0, 1)."""
        return torch.sigmoid(self.logit(loss, onehot, y_hat))


class Corrector(nn.Module):
    """θ = (θ_α, θ_β): makes soft labels from given labels, predictions and past labels.

    ``loss_mode='soft'`` is the paper (Eq. 4/6 with ``ℓ_β = CE(ŷ, ỹ_prev)``);
    ``loss_mode='hard'`` is the authors' code: ``ŷ`` and ``ỹ_prev`` are replaced by
    one-hots of their arg-max, which makes the soft cross-entropy equal to their
    three hard-label terms ``α·CE(f, y) + (1−α)β·CE(f, argmax ỹ_prev) +
    (1−α)(1−β)·CE(f, argmax f)`` (cross-entropy is linear in its target).

    ``kind='class'`` (needs ``num_classes``) feeds α_net and β_net the given class and
    the prediction as well (:class:`ClassMLP`); ``kind='loss'`` is the paper's.

    ``transition=True`` (needs ``num_classes``; beyond the paper) replaces the prediction
    term ``ŷ`` of Eq. 6 by the posterior of the true class given ŷ and the given label
    under the estimated noise transition (:func:`transition_posterior`; the buffer
    ``transition``, set by :meth:`set_transition`, starts uninformative). With α = β = 0
    the soft labels are that posterior, and training on them takes the gradient of
    forward loss correction (GLC's loss) through ``T``: ``∂/∂z −log (softmax(z) T)_y = p − π``.
    ``alpha_prior='prediction'`` (beyond the paper) adds α_net's output, in logit space, to
    the logit of the model's probability of the given label, ŷ_y: α starts near ŷ_y (trust
    the given label as much as the model does) rather than near 0.5, and α_net learns the
    correction; ``'none'`` is the paper's α = α_net(·).
    """

    def __init__(
        self,
        hidden: int = 100,
        loss_mode: str = "soft",
        fixed_beta: float | None = None,
        *,
        kind: str = "loss",
        num_classes: int | None = None,
        transition: bool = False,
        alpha_prior: str = "none",
        posterior_mix: float = 0.0,
        mix_min_concentration: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= posterior_mix <= 1.0:
            raise ValueError(f"posterior_mix must be in [0, 1], got {posterior_mix}")
        if not 0.0 <= mix_min_concentration <= 1.0:
            raise ValueError(f"mix_min_concentration must be in [0, 1], got {mix_min_concentration}")
        self.posterior_mix, self.mix_min_concentration = posterior_mix, mix_min_concentration
        if loss_mode not in LOSS_MODES:
            raise ValueError(f"loss_mode must be one of {LOSS_MODES}, got {loss_mode!r}")
        if fixed_beta is not None and not 0.0 <= fixed_beta <= 1.0:
            raise ValueError(f"fixed_beta must be in [0, 1], got {fixed_beta}")
        if kind not in CORRECTORS:
            raise ValueError(f"corrector kind must be one of {CORRECTORS}, got {kind!r}")
        if kind == "class" and (num_classes is None or num_classes < 2):
            raise ValueError(f"the class-aware corrector needs num_classes >= 2, got {num_classes}")
        if alpha_prior not in ALPHA_PRIORS:
            raise ValueError(f"alpha_prior must be one of {ALPHA_PRIORS}, got {alpha_prior!r}")
        self.alpha_prior = alpha_prior
        if transition and (num_classes is None or num_classes < 2):
            raise ValueError(f"a transition-aware corrector needs num_classes >= 2, got {num_classes}")
        self.loss_mode = loss_mode
        self.fixed_beta = fixed_beta  # the β ablation: a constant instead of β_net
        self.kind = kind
        if kind == "loss":
            self.alpha_net, self.beta_net = LossMLP(hidden), LossMLP(hidden)
        else:
            self.alpha_net, self.beta_net = ClassMLP(num_classes, hidden), ClassMLP(num_classes, hidden)
        uninformative = torch.full((num_classes, num_classes), 1.0 / num_classes) if transition else None
        self.register_buffer("transition", uninformative)  # None: not in the state dict
        # the classifier's share of the prediction term in its target (0-d; None: it trains on ỹ); with a
        # minimum concentration it stays 0 until set_transition finds the noise concentrated enough
        start = posterior_mix if mix_min_concentration == 0 else 0.0
        self.register_buffer("mix", torch.tensor(start) if posterior_mix > 0 else None)

    def set_transition(self, transition: torch.Tensor) -> None:
        """Set the (C, C) noise transition estimate (row-stochastic, ``T[true, given]``)."""
        if self.transition is None:
            raise ValueError("this corrector was built without transition=True")
        t = torch.as_tensor(transition, dtype=self.transition.dtype)
        if t.shape != self.transition.shape:
            raise ValueError(f"transition must have shape {tuple(self.transition.shape)}, got {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
            raise ValueError("transition must be finite and non-negative")
        self.transition.copy_(t.to(self.transition.device))
        if self.mix is not None and self.mix_min_concentration > 0:
            concentrated = transition_concentration(t) >= self.mix_min_concentration
            self.mix.fill_(self.posterior_mix if concentrated else 0.0)

    def weights(
        self, loss_alpha: torch.Tensor, loss_beta: torch.Tensor, onehot: torch.Tensor, y_hat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha (n,), beta (n,))`` from the two losses (n,), the one-hot given labels (n, C)
        and the predictions (n, C)."""

        def net(mlp: nn.Module, loss: torch.Tensor) -> torch.Tensor:
            return mlp(loss) if self.kind == "loss" else mlp(loss, onehot, y_hat)

        if self.alpha_prior == "prediction":  # α = σ(logit ŷ_y + α_net's logit): it starts near ŷ_y
            logit = (
                self.alpha_net.logit(loss_alpha)
                if self.kind == "loss"
                else self.alpha_net.logit(loss_alpha, onehot, y_hat)
            )
            p_given = torch.exp(-loss_alpha).clamp(1e-4, 1.0 - 1e-4)
            alpha = torch.sigmoid(logit + torch.log(p_given) - torch.log1p(-p_given))
        else:
            alpha = net(self.alpha_net, loss_alpha)
        beta = net(self.beta_net, loss_beta) if self.fixed_beta is None else torch.full_like(alpha, self.fixed_beta)
        return alpha, beta

    def forward(
        self, y_hat: torch.Tensor, y: torch.Tensor, y_prev: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(soft (n, C), alpha (n,), beta (n,))``; inputs are detached. ``y_hat``
        (n, C) predictions, ``y`` (n,) given labels, ``y_prev`` (n, C) previous soft labels."""
        return self.correct(y_hat, y, y_prev)[:3]

    def correct(
        self, y_hat: torch.Tensor, y: torch.Tensor, y_prev: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward`'s ``(soft, alpha, beta)`` and Eq. 6's prediction term ``pred`` (n, C):
        ``y_hat`` itself, or its posterior under the noise transition where the corrector has one
        (what ``mix`` blends into the classifier's target)."""
        y_hat = y_hat.detach()
        y_prev = y_prev.detach().to(y_hat.dtype)
        pred = y_hat if self.transition is None else transition_posterior(y_hat, y, self.transition)
        if self.loss_mode == "hard":
            y_hat_t, y_prev_t = argmax_onehot(pred), argmax_onehot(y_prev)
        else:
            y_hat_t, y_prev_t = pred, y_prev
        onehot = F.one_hot(y, y_hat.shape[1]).to(y_hat.dtype)
        loss_alpha = target_cross_entropy(y_hat, onehot)
        loss_beta = target_cross_entropy(y_hat, y_prev_t)
        alpha, beta = self.weights(loss_alpha, loss_beta, onehot, y_hat)
        return soft_labels(y, y_hat_t, y_prev_t, alpha, beta), alpha, beta, pred
