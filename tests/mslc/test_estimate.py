"""The held-out estimate's pure steps (mslc.estimate) against naive references and planted noise."""

from __future__ import annotations

import numpy as np
import pytest

from mslc.estimate import (
    RECALIBRATION_EDGES,
    binned_recalibration,
    crossfit_folds,
    crossfit_recalibration,
    crossfit_targets,
    fit_transition,
    heldout_posterior,
    recalibrate,
    supported_flips,
)
from mslc.metrics import clean_split_calibration, label_posterior


def calibrated_predictions(n: int, c: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Predictions that are exactly calibrated: the true class is drawn from each row."""
    logits = rng.normal(size=(n, c)) * 2.0
    logits[np.arange(n), rng.integers(0, c, n)] += 3.0
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    true = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    return p, true


def noisy(true: np.ndarray, t: np.ndarray, rng) -> np.ndarray:
    return (t[true].cumsum(1) > rng.random((len(true), 1))).argmax(1)


def test_folds_are_balanced_seeded_and_checked():
    f = crossfit_folds(1001, 3, seed=4)
    assert sorted(np.bincount(f).tolist()) == [333, 334, 334]
    assert (f == crossfit_folds(1001, 3, seed=4)).all()
    assert (f != crossfit_folds(1001, 3, seed=5)).any()
    with pytest.raises(ValueError, match="at least 2 folds"):
        crossfit_folds(10, 1, seed=0)
    with pytest.raises(ValueError, match="cannot fill"):
        crossfit_folds(2, 3, seed=0)


@pytest.mark.parametrize("kind", ["flips", "spread"])
def test_fit_transition_recovers_planted_noise(kind):
    rng = np.random.default_rng(0)
    c = 4
    if kind == "flips":
        t = np.eye(c) * 0.6 + np.roll(np.eye(c), 1, axis=1) * 0.4
    else:
        t = np.full((c, c), 0.4 / (c - 1)) + np.eye(c) * (0.6 - 0.4 / (c - 1))
    p, true = calibrated_predictions(40_000, c, rng)
    given = noisy(true, t, rng)
    fit = fit_transition(p, given, np.full((c, c), 1.0 / c), iters=200)
    np.testing.assert_allclose(fit.sum(1), 1.0)
    assert np.abs(fit - t).max() < 0.03
    # from an estimate with the right zeros, zeros stay zero
    fit0 = fit_transition(p, given, np.where(t > 0, 1.0, 0.0) / (t > 0).sum(1, keepdims=True))
    assert (fit0[t == 0] == 0).all()


def test_fit_transition_rejects_shapes_that_disagree():
    with pytest.raises(ValueError, match="do not agree"):
        fit_transition(np.full((5, 3), 1 / 3), np.zeros(5, dtype=np.int64), np.eye(4))


def test_binned_recalibration_against_a_loop():
    rng = np.random.default_rng(1)
    p, _ = calibrated_predictions(3000, 5, rng)
    labels = rng.integers(0, 5, 3000)
    got = binned_recalibration(p, labels, prior_weight=3.0)
    edges = RECALIBRATION_EDGES
    for k in range(5):
        for b in range(len(edges) - 1):
            rows = [i for i in range(3000) if p[i].argmax() == k and edges[b] <= p[i].max() < edges[b + 1]]
            if not rows:
                assert np.isnan(got[k, b]).all()
                continue
            want = (np.bincount(labels[rows], minlength=5) + 3.0 * p[rows].mean(0)) / (len(rows) + 3.0)
            np.testing.assert_allclose(got[k, b], want)


def test_recalibrate_against_a_loop_and_leaves_unmeasured_cells():
    rng = np.random.default_rng(2)
    p, true = calibrated_predictions(4000, 4, rng)
    table = binned_recalibration(p[:2000], true[:2000])
    table[0] = np.nan  # predicted class 0 never measured
    got = recalibrate(p[2000:], table)
    q = p[2000:]
    want = q.copy()
    edges = np.asarray(RECALIBRATION_EDGES)
    cell = [(int(r.argmax()), int(np.searchsorted(edges, r.max(), side="right") - 1)) for r in q]
    for key in set(cell):
        rows = [i for i, c in enumerate(cell) if c == key]
        if np.isnan(table[key]).any():
            continue
        want[rows] = q[rows] * table[key] / q[rows].mean(0)
    want /= want.sum(1, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    untouched = q.argmax(1) == 0
    np.testing.assert_allclose(got[untouched], q[untouched])


def test_crossfit_recalibration_never_uses_a_clean_samples_own_label():
    """Each part is recalibrated by the table of the clean samples outside it (the same sample
    in the same part in every block): changing one clean sample's label leaves its own
    predictions as they were, and moves only the other part's."""
    rng = np.random.default_rng(6)
    c, n, blocks = 4, 600, 2
    p, _ = calibrated_predictions(3000, c, rng)
    pc = np.concatenate([calibrated_predictions(n, c, np.random.default_rng(7))[0]] * blocks)
    y = np.tile(rng.integers(0, c, n), blocks)
    tr, cl = crossfit_recalibration(p, pc, y, blocks=blocks, seed=3)
    np.testing.assert_allclose(tr.sum(1), 1.0)
    np.testing.assert_allclose(cl.sum(1), 1.0)
    # against the definition, parts dealt as the function deals them
    deal = np.random.default_rng(3)
    part_clean, part_train = np.tile(deal.permutation(n) % 2, blocks), deal.permutation(len(p)) % 2
    for h in range(2):
        table = binned_recalibration(pc[part_clean != h], y[part_clean != h])
        np.testing.assert_allclose(tr[part_train == h], recalibrate(p[part_train == h], table))
        np.testing.assert_allclose(cl[part_clean == h], recalibrate(pc[part_clean == h], table))
    j = int(np.flatnonzero(part_clean[:n] == 0)[0])
    y2 = y.copy()
    y2[[j, j + n]] = (y[j] + 1) % c
    tr2, cl2 = crossfit_recalibration(p, pc, y2, blocks=blocks, seed=3)
    np.testing.assert_array_equal(cl2[part_clean == 0], cl[part_clean == 0])
    np.testing.assert_array_equal(tr2[part_train == 0], tr[part_train == 0])
    assert not np.array_equal(cl2[part_clean == 1], cl[part_clean == 1])
    with pytest.raises(ValueError, match="equal blocks"):
        crossfit_recalibration(p, pc[:-1], y[:-1], blocks=2)
    with pytest.raises(ValueError, match="at least 2 parts"):
        crossfit_recalibration(p, pc, y, blocks=2, parts=1)


def test_heldout_posterior_recalibrates_only_spread_noise():
    rng = np.random.default_rng(3)
    c = 4
    p, true = calibrated_predictions(6000, c, rng)
    pc, clean = calibrated_predictions(2000, c, rng)
    flips = np.eye(c) * 0.6 + np.roll(np.eye(c), 1, axis=1) * 0.4
    spread = np.full((c, c), 0.4 / (c - 1)) + np.eye(c) * (0.6 - 0.4 / (c - 1))
    given = noisy(true, flips, rng)
    r = heldout_posterior(p, pc, clean, given, flips, folds=2)
    assert not r["recalibrated"]
    t = fit_transition(p, given, flips)
    np.testing.assert_allclose(r["transition"], t)
    np.testing.assert_allclose(r["posterior"], label_posterior(p, given, t))
    bins = clean_split_calibration(pc, clean, t)
    assert [b["n_eff"] for b in r["calibration"]] == pytest.approx([b["n_eff"] / 2 for b in bins])
    given = noisy(true, spread, rng)
    for oos in (False, True):
        r = heldout_posterior(p, pc, clean, given, spread, out_of_sample=oos, seed=4)
        assert r["recalibrated"]
        if oos:  # each part by the table of the clean samples outside it
            q, qc = crossfit_recalibration(p, pc, clean, seed=4)
        else:  # one table, fitted on the whole clean split
            table = binned_recalibration(pc, clean)
            q, qc = recalibrate(p, table), recalibrate(pc, table)
        t = fit_transition(q, given, spread)
        np.testing.assert_allclose(r["posterior"], label_posterior(q, given, t))
        assert [b["true"] for b in r["calibration"]] == pytest.approx(
            [b["true"] for b in clean_split_calibration(qc, clean, t)], nan_ok=True
        )


def test_crossfit_targets_are_soft_under_spread_noise_and_labels_under_flips():
    rng = np.random.default_rng(5)
    c = 4
    y = rng.dirichlet(np.ones(c), size=50)
    flips = np.eye(c) * 0.6 + np.roll(np.eye(c), 1, axis=1) * 0.4
    spread = np.full((c, c), 0.4 / (c - 1)) + np.eye(c) * (0.6 - 0.4 / (c - 1))
    hard = crossfit_targets(y, flips)
    assert hard.dtype == np.int64 and hard.shape == (50,)
    np.testing.assert_array_equal(hard, y.argmax(1))
    soft = crossfit_targets(y, spread)
    assert soft.dtype == np.float32 and soft.shape == (50, c)
    np.testing.assert_allclose(soft, y, rtol=1e-6)
    with pytest.raises(ValueError, match="y_tilde .* and transition .* do not agree"):
        crossfit_targets(y, np.eye(c + 1))
    with pytest.raises(ValueError, match="do not agree"):
        crossfit_targets(y.argmax(1), flips)


def test_supported_flips_finds_the_planted_flips_and_not_the_models_mistakes():
    """Predictions whose arg-max is often wrong (the true class is drawn from each row): the
    flips planted in the given labels are kept, no cell the noise never reaches is."""
    rng = np.random.default_rng(4)
    c = 5
    flips = np.eye(c)
    for src, dst in [(0, 3), (2, 4)]:
        flips[src] = 0.0
        flips[src, src], flips[src, dst] = 0.6, 0.4
    p, true = calibrated_predictions(30_000, c, rng)
    pc, clean = calibrated_predictions(1000, c, rng)
    keep = supported_flips(
        p, noisy(true, flips, rng), np.concatenate([pc, pc]), np.concatenate([clean, clean]), blocks=2
    )
    np.testing.assert_array_equal(keep, flips > 0)
    # without noise nothing off the diagonal is kept, although the arg-max is wrong for ~25% of them
    assert (p.argmax(1) != true).mean() > 0.2
    np.testing.assert_array_equal(supported_flips(p, true, pc, clean), np.eye(c, dtype=bool))


def test_supported_flips_against_a_loop():
    rng = np.random.default_rng(5)
    c, z = 3, 1.645
    p, true = calibrated_predictions(600, c, rng)
    pc, clean = calibrated_predictions(90, c, rng)
    given = noisy(true, np.full((c, c), 0.1) + np.eye(c) * 0.7, rng)
    got = supported_flips(p, given, pc, clean, z=z)
    for cc in range(c):
        for g in range(c):
            share = np.mean(p[given == g].argmax(1) == cc)
            n = np.sum(clean == g)
            rate = (np.sum(pc[clean == g].argmax(1) == cc) + 1) / (n + 2)
            want = cc == g or share > rate + z * np.sqrt(rate * (1 - rate) / n)
            assert got[cc, g] == want, (cc, g)


def test_supported_flips_keeps_what_it_cannot_test_and_checks_shapes():
    p = np.eye(4)[[0, 1, 1, 0, 2, 0]]
    given = np.array([0, 1, 1, 0, 2, 2])
    keep = supported_flips(p, given, np.eye(4)[[0, 1, 3]], np.array([0, 1, 3]))
    assert keep[:, 2].all()  # no clean sample of class 2: its column cannot be tested
    assert keep[:, 3].all()  # no sample is given class 3
    assert not keep[1, 0] and not keep[0, 1]
    with pytest.raises(ValueError, match="do not agree"):
        supported_flips(p, np.zeros(3, dtype=np.int64), p, np.zeros(6, dtype=np.int64))


def test_heldout_posterior_removes_unsupported_flips_from_a_dense_start():
    """Where the noise is class flips, a starting transition with small entries everywhere
    (GLC's, say) is refitted with only the flips the given labels support."""
    rng = np.random.default_rng(6)
    c = 4
    flips = np.eye(c) * 0.6 + np.roll(np.eye(c), 1, axis=1) * 0.4
    p, true = calibrated_predictions(20_000, c, rng)
    pc, clean = calibrated_predictions(1000, c, rng)
    given = noisy(true, flips, rng)
    dense = flips * 0.96 + 0.01
    r = heldout_posterior(p, pc, clean, given, dense)
    assert not r["recalibrated"]
    assert (r["transition"][flips == 0] == 0).all()
    assert np.abs(r["transition"] - flips).max() < 0.03
