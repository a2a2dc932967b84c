"""Per-epoch label metrics count only samples whose true label is known (as on Clothing1M)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from mslc.bank import LocalBank
from pipeline.training.methods.state import Data
from pipeline.training.run.evaluate import bank_metrics
from pipeline.training.run.outputs import summarize


def test_label_metrics_skip_samples_without_a_true_label():
    labels, true = np.array([0, 1, 2, 0]), np.array([0, 2, -1, -1])
    data = Data(
        Path("."),
        {"num_classes": 3},
        labels,
        true,
        np.array(["a", "b", "c", "d"]),
        torch.empty(0),
        torch.empty(0),
        torch.zeros(1),
        torch.ones(1),
    )
    bank = LocalBank(labels, 3)
    fixed = torch.tensor([[0.1, 0.1, 0.8], [0.0, 1.0, 0.0]])  # sample 1 corrected to its true class 2
    bank.put(torch.tensor([1, 2]), y_hat=fixed, y_tilde=fixed, alpha=torch.tensor([0.1, 0.9]))
    out, _ = bank_metrics(bank, data)
    assert out["corrected_all"] == 1.0 and out["corrected_clean"] == 1.0 and out["corrected_noisy"] == 1.0
    assert np.isnan(out["alpha_clean"]) and out["alpha_noisy"] == np.float32(0.1)
    # detection on the known samples: sample 1 (wrong, flagged) is found, sample 0 (right) is not flagged
    assert (out["detect_precision"], out["detect_recall"], out["detect_f1"]) == (1.0, 1.0, 1.0)


def test_detection_scores_against_a_naive_count():
    from mslc.metrics import detection_scores

    rng = np.random.default_rng(0)
    flagged, noisy = rng.random(500) < 0.3, rng.random(500) < 0.2
    tp = sum(f and n for f, n in zip(flagged, noisy))
    p, r = tp / sum(flagged), tp / sum(noisy)
    got = detection_scores(flagged, noisy)
    assert got["precision"] == pytest.approx(p) and got["recall"] == pytest.approx(r)
    assert got["f1"] == pytest.approx(2 * p * r / (p + r))
    none = detection_scores(np.zeros(4, bool), np.array([1, 0, 0, 0], bool))
    assert np.isnan(none["precision"]) and none["recall"] == 0 and np.isnan(none["f1"])
    with pytest.raises(ValueError, match="differ in shape"):
        detection_scores(np.zeros(3, bool), np.zeros(4, bool))


def test_summary_selects_on_validation_never_on_test():
    hist = [
        {"epoch": e, "val_acc": v, "test_acc": t}
        for e, v, t in [(1, 0.5, 0.9), (2, 0.8, 0.6), (3, 0.7, 0.95), (4, 0.8, 0.1), (5, 0.6, 0.7), (6, 0.6, 0.7)]
    ]
    s = summarize(hist)
    assert s["selected_epoch"] == 2 and s["best_test_acc"] == 0.6  # earliest of the tied best validation
    assert s["last5_epochs"] == [2, 3, 4, 5, 6] and abs(s["last5_test_acc"] - 0.61) < 1e-12


def test_exported_labels_come_from_the_latest_epoch_validation_cannot_tell_from_the_best():
    from pipeline.training.run.outputs import label_window, labels_epoch

    def hist(vals, n=1000, warm=2):
        return [
            {"epoch": i + 1, "phase": "warmup" if i < warm else "mslc", "val_acc": v, "val_samples": n}
            for i, v in enumerate(vals)
        ]

    # best 0.90 at epoch 4; one s.e. at n = 1000 is 0.0095: epoch 6 (0.891) is within, epoch 7 (0.88) is not
    assert labels_epoch(hist([0.99, 0.5, 0.85, 0.90, 0.86, 0.891, 0.88])) == 6  # warm-up epochs never count
    assert labels_epoch(hist([0.5, 0.5, 0.85, 0.90, 0.86, 0.891, 0.88], n=10**9)) == 4  # a huge split: the best
    assert labels_epoch(hist([0.5, 0.5, float("nan"), None])) == 4  # no validation: the last epoch
    assert labels_epoch(hist([0.5, 0.7], warm=5)) == 2  # nothing after the warm-up: all epochs count
    s = summarize(
        [
            {**h, "test_acc": 0.5, "corrected_all": 0.1 * h["epoch"]}
            for h in hist([0.5, 0.5, 0.85, 0.90, 0.86, 0.891, 0.88])
        ]
    )
    assert s["labels"]["epoch"] == 6 and s["labels"]["corrected_all"] == pytest.approx(0.6)
    assert s["selected_epoch"] == 4  # model selection is unchanged: the best validation epoch
    assert label_window(hist([0.99, 0.5, 0.85, 0.90, 0.86, 0.891, 0.88])) == [4, 6]
    assert label_window(hist([0.5, 0.5, float("nan"), None])) == [4]
    exported = {"epoch": 6, "epochs": [4, 6], "selected_by": "x", "corrected_all": 0.7}
    with_test = [{**h, "test_acc": 0.5} for h in hist([0.5, 0.5, 0.85, 0.90, 0.86, 0.891, 0.88])]
    assert summarize(with_test, exported)["labels"] == exported


def test_the_exported_soft_labels_are_the_mean_of_the_window_epochs():
    """run.export=window keeps ỹ of every epoch in the window (dropping one that leaves it)
    and exports their mean with the latest epoch's y_hat, α and β; run.export=latest keeps
    the latest alone; a checkpoint's labels from before the window (one epoch) still export."""
    from pipeline.training.run.outputs import exported_labels, keep_labels

    rng = np.random.default_rng(0)

    def table(e):
        y = rng.dirichlet(np.ones(3), size=4).astype(np.float32)
        return {"y_tilde": y, "y_hat": y * 0 + e, "alpha": np.full(4, e, np.float32), "beta": np.zeros(4, np.float32)}

    tabs = {e: table(e) for e in range(1, 5)}
    windows = {1: [1], 2: [1, 2], 3: [2, 3], 4: [2, 3]}  # epoch 1 leaves at 3; 4 is outside the window
    kept, latest = None, None
    for e in range(1, 5):
        kept = keep_labels(kept, tabs[e], e, windows[e], mode="window")
        latest = keep_labels(latest, tabs[e], e, windows[e], mode="latest")
    t = exported_labels(kept)
    assert t["epochs"] == [2, 3] and t["epoch"] == 3
    np.testing.assert_allclose(t["y_tilde"], (tabs[2]["y_tilde"] + tabs[3]["y_tilde"]) / 2, rtol=1e-6)
    np.testing.assert_allclose(t["y_tilde"].sum(1), 1.0, rtol=1e-6)
    assert (t["alpha"] == 3).all() and (t["y_hat"] == 3).all()
    t = exported_labels(latest)
    assert t["epochs"] == [3] and np.array_equal(t["y_tilde"], tabs[3]["y_tilde"])
    old = {"epoch": 2, **{k: torch.from_numpy(v) for k, v in tabs[2].items()}}  # a checkpoint of before
    assert exported_labels(old)["epochs"] == [2]
    assert exported_labels(keep_labels(old, tabs[3], 3, [2, 3], mode="window"))["epochs"] == [2, 3]
