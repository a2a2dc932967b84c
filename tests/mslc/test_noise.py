import numpy as np
import pytest

from mslc.noise import (
    CIFAR10_ASYM,
    CIFAR100_SUPERCLASSES,
    FMNIST_ASYM,
    corrupt,
    instance_dependent,
    make_transition,
    superclass_next_map,
    truncated_normal,
)

C = 10
LABELS = np.arange(20000) % C


@pytest.mark.parametrize(
    "kind,rate,expected_wrong",
    [
        ("sym", 0.4, 0.4 * 9 / 10),
        ("sym", 0.8, 0.8 * 9 / 10),
        ("sym-exclusive", 0.4, 0.4),
        ("pairflip", 0.3, 0.3),
        ("none", 0.5, 0.0),
    ],
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


def _clustered_features(n=6000, d=40, seed=0):
    """Two sub-clusters per class: which wrong label a sample gets should follow its sub-cluster."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % C
    sub = rng.integers(0, 2, n)
    centers = rng.normal(0, 3, (C, 2, d))
    return centers[y, sub] + rng.normal(0, 0.3, (n, d)), y, sub


def test_instance_dependent_noise_rate_and_matrix():
    x, y, _ = _clustered_features()
    out = instance_dependent(x, y, C, 0.4, seed=5)
    assert abs(out.rate - 0.4) < 0.02  # the flip rates are N(0.4, 0.1) truncated to [0, 1]
    np.testing.assert_allclose(out.transition.sum(1), 1.0)
    np.testing.assert_allclose(np.diag(out.transition), 0.6, atol=0.01)
    np.testing.assert_allclose(out.realized, out.transition, atol=0.05)  # realized follows the expected matrix
    same = instance_dependent(x, y, C, 0.4, seed=5)
    np.testing.assert_array_equal(out.noisy, same.noisy)
    assert (instance_dependent(x, y, C, 0.4, seed=6).noisy != out.noisy).any()


def test_instance_dependent_noise_depends_on_the_instance():
    """Unlike a class transition matrix, samples of one class from different parts of the
    feature space are flipped to different classes."""
    x, y, sub = _clustered_features()
    out = instance_dependent(x, y, C, 0.4, seed=1)
    differ = 0
    for c in range(C):
        targets = []
        for s in (0, 1):
            flipped = out.noisy[(y == c) & (sub == s) & out.is_noisy]
            targets.append(np.bincount(flipped, minlength=C).argmax())
        differ += targets[0] != targets[1]
    assert differ >= C // 2


def test_instance_dependent_noise_checks_its_inputs():
    x, y, _ = _clustered_features(200)
    with pytest.raises(ValueError, match="features must be"):
        instance_dependent(x[:10], y, C, 0.4, seed=0)
    with pytest.raises(ValueError, match="label 10 of sample 0"):
        instance_dependent(x[:2], np.array([10, 1]), C, 0.4, seed=0)
    with pytest.raises(ValueError, match="noise rate"):
        instance_dependent(x, y, C, 1.4, seed=0)
    with pytest.raises(ValueError, match="instance_dependent"):
        make_transition("instance", C, 0.4)


def test_truncated_normal_stays_in_range():
    v = truncated_normal(20000, 0.9, 0.3, rng=np.random.default_rng(0))
    assert v.min() >= 0 and v.max() <= 1 and 0.7 < v.mean() < 0.85
