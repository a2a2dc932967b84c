import numpy as np
import pytest

from mslc.noise import (
    CIFAR10_ASYM, CIFAR100_SUPERCLASSES, FMNIST_ASYM, corrupt, make_transition, superclass_next_map,
)

C = 10
LABELS = np.arange(20000) % C


@pytest.mark.parametrize(
    "kind,rate,expected_wrong",
    [("sym", 0.4, 0.4 * 9 / 10), ("sym", 0.8, 0.8 * 9 / 10), ("sym-exclusive", 0.4, 0.4),
     ("pairflip", 0.3, 0.3), ("none", 0.5, 0.0)],
)
def test_realized_rate_matches_the_model(kind, rate, expected_wrong):
    t = make_transition(kind, C, rate)
    np.testing.assert_allclose(t.sum(1), 1.0)
    out = corrupt(LABELS, t, seed=1)
    assert abs(out.rate - expected_wrong) < 0.015
    np.testing.assert_allclose(out.realized.sum(1), 1.0)
    np.testing.assert_allclose(out.realized, t, atol=0.03)


def test_symmetric_may_keep_the_true_label_exclusive_never_does():
    sym = corrupt(LABELS, make_transition("sym", C, 1.0), seed=0)
    exc = corrupt(LABELS, make_transition("sym-exclusive", C, 1.0), seed=0)
    assert 0.05 < (sym.noisy == LABELS).mean() < 0.15  # about 1/C kept
    assert (exc.noisy == LABELS).sum() == 0


def test_asymmetric_flips_only_mapped_classes_to_their_targets():
    out = corrupt(LABELS, make_transition("asym", C, 0.4, mapping=CIFAR10_ASYM), seed=3)
    for c in range(C):
        got = set(out.noisy[LABELS == c].tolist())
        assert got == ({c, CIFAR10_ASYM[c]} if c in CIFAR10_ASYM else {c})
    assert abs(out.rate - 0.4 * len(CIFAR10_ASYM) / C) < 0.015
    fm = make_transition("asym", C, 0.4, mapping=FMNIST_ASYM)
    assert fm[0, 6] == pytest.approx(0.4) and fm[1, 1] == 1.0


def test_same_seed_same_labels_other_seed_other_labels():
    t = make_transition("sym", C, 0.5)
    a, b, c = corrupt(LABELS, t, seed=7), corrupt(LABELS, t, seed=7), corrupt(LABELS, t, seed=8)
    np.testing.assert_array_equal(a.noisy, b.noisy)
    assert (a.noisy != c.noisy).any()


def test_cifar100_superclass_map_stays_inside_the_superclass():
    fine_to_coarse = {f: s for s, members in enumerate(CIFAR100_SUPERCLASSES) for f in members}
    fine = np.arange(100).repeat(3)
    coarse = np.array([fine_to_coarse[f] for f in fine])
    mapping = superclass_next_map(fine, coarse)
    assert sorted(mapping) == list(range(100))
    for f, g in mapping.items():
        assert f != g and fine_to_coarse[f] == fine_to_coarse[g]
    assert mapping[4] == 30 and mapping[95] == 4  # next in id order, cyclic
    with pytest.raises(ValueError, match="fine class 4"):
        superclass_next_map(np.array([4, 4]), np.array([0, 1]))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="noise rate"):
        make_transition("sym", C, 1.5)
    with pytest.raises(ValueError, match="unknown noise kind"):
        make_transition("gaussian", C, 0.1)
    with pytest.raises(ValueError, match="label 10 of sample 2"):
        corrupt(np.array([0, 1, 10]), make_transition("sym", C, 0.1), seed=0)
