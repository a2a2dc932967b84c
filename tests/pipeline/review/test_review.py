"""The label review (issue 16): its pure selections against naive references, images read
from only the shards that hold them, the page's numbers against the Parquet table, a page
without truth, an old report kept whole when a new one fails, and relabel.csv round trips
through the shard writer. On fake shards and a made-up corrected-label table: no training."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import shardset
from pipeline.errors import PipelineError, ShardError
from pipeline.prep.job import ensure_shards
from pipeline.review import images, page, select
from pipeline.review.report import load_run, suspects_grid, write_relabel, write_report
from pipeline.rundir import RunDir
from pipeline.training.run.outputs import write_corrected_labels
from pipeline.training.settings.config import Config
from tests.conftest import fake_images
from tests.helpers import parquet_numbers


def random_table(n=300, c=5, known="all", seed=0) -> dict:
    rng = np.random.default_rng(seed)
    given = rng.integers(0, c, n)
    true = np.where(rng.random(n) < 0.3, rng.integers(0, c, n), given)
    if known == "none":
        true[:] = -1
    elif known == "part":
        true[rng.random(n) < 0.5] = -1
    soft = rng.dirichlet(np.ones(c) * 0.5, n)
    soft[np.arange(n), given] += rng.random(n) * 1.5
    soft /= soft.sum(1, keepdims=True)
    soft[:4] = np.full(c, 1 / c)  # ties
    corrected = soft.argmax(1)
    alpha = rng.random(n)
    alpha[5] = np.nan
    return {
        "index": np.arange(n),
        "key": np.asarray([f"k/{i}.jpg" for i in range(n)], dtype=object),
        "given": given,
        "corrected": corrected,
        "prob": soft[np.arange(n), corrected],
        "alpha": alpha,
        "beta": rng.random(n),
        "true": true,
        "labels_epoch": 3,
        "soft": soft,
        "est_correct": np.clip(soft[np.arange(n), corrected] + rng.normal(0, 0.05, n), 0, 1),
        "est_correct_by": "transition posterior",
    }


@pytest.mark.parametrize("known", ["all", "part", "none"])
def test_numbers_against_a_naive_count(known):
    t, c = random_table(known=known), 5
    n = select.review_numbers(t, c)
    rows = list(zip(t["given"].tolist(), t["corrected"].tolist(), t["true"].tolist()))
    assert n["samples"] == len(rows) and n["flagged"] == sum(g != k for g, k, _ in rows)
    for k in range(c):
        mine = [r for r in rows if r[0] == k]
        assert n["classes"][k]["given"] == len(mine)
        assert n["classes"][k]["est_noise_rate"] == pytest.approx(sum(r[1] != k for r in mine) / len(mine))
    kn = [r for r in rows if r[2] >= 0]
    assert n["known"] == len(kn)
    if not kn:
        assert not any(key.startswith(("detect", "label_acc", "true_noise")) for key in n)
        return
    noisy = [r for r in kn if r[0] != r[2]]
    flagged = [r for r in kn if r[1] != r[0]]
    tp = sum(r[1] != r[0] for r in noisy)
    assert n["detect_precision"] == pytest.approx(tp / len(flagged))
    assert n["detect_recall"] == pytest.approx(tp / len(noisy))
    assert n["label_acc_corrected"] == pytest.approx(np.mean([r[1] == r[2] for r in kn]))
    assert n["label_acc_corrected_noisy"] == pytest.approx(np.mean([r[1] == r[2] for r in noisy]))
    assert n["label_acc_given"] == pytest.approx(1 - len(noisy) / len(kn)) == 1 - n["true_noise_rate"]
    flips = {}
    for g, k, _ in rows:
        if g != k:
            flips[(g, k)] = flips.get((g, k), 0) + 1
    assert [(g, k, m) for g, k, m in n["top_flips"]] == sorted(
        ((g, k, m) for (g, k), m in flips.items()), key=lambda x: (-x[2], x[0], x[1])
    )[:10]


def test_the_summary_says_when_no_cut_reaches_the_target():
    """A run whose budget finds no cut (threshold 1.0, no flag kept) says relabel.csv is empty;
    one that cuts does not."""
    from pipeline.review.page import summary_section

    n = select.review_numbers(random_table(known="none"), 5)
    assert n["flagged"] > 0
    empty = {**n, "budget_threshold": 1.0, "budget_flags": 0}
    assert "relabel.csv is empty" in summary_section(empty)
    assert "relabel.csv is empty" not in summary_section({**n, "budget_threshold": 0.5, "budget_flags": 3})


def test_galleries_and_relabel_rows_against_sorting():
    t = random_table()
    for k in range(5):
        flagged = [i for i in range(300) if t["corrected"][i] != t["given"][i] and t["given"][i] == k]
        clean = [i for i in range(300) if t["corrected"][i] == t["given"][i] and t["given"][i] == k]
        assert select.suspected_errors(t, k, 4).tolist() == sorted(flagged, key=lambda i: (-t["prob"][i], i))[:4]
        assert select.doubtful_clean(t, k, 4).tolist() == sorted(clean, key=lambda i: (t["prob"][i], i))[:4]
    rows = select.relabel_rows(t, threshold=0.5)
    assert rows.tolist() == sorted(
        (i for i in range(300) if t["corrected"][i] != t["given"][i] and t["prob"][i] >= 0.5),
        key=lambda i: (-t["prob"][i], i),
    )
    with pytest.raises(ValueError, match="threshold"):
        select.relabel_rows(t, threshold=1.5)


def naive_top_suspects(given, soft, k, shard, max_shards):
    """Candidates one by one, most confident first; a new shard only while the budget lasts."""
    corrected = soft.argmax(1)
    cand = sorted((i for i in range(len(given)) if corrected[i] != given[i]), key=lambda i: -soft[i, corrected[i]])
    chosen, shards = [], []
    for i in cand:
        if shard[i] not in shards:
            if len(shards) == max_shards:
                continue
            shards.append(shard[i])
        chosen.append(i)
        if len(chosen) == k:
            break
    return chosen


def test_top_suspects_stay_within_the_shard_budget():
    t = random_table(n=400)
    shard = np.arange(400) // 50  # 8 shards
    for k, budget in ((20, 2), (5, 1), (400, 3), (400, 8)):
        chosen = select.top_suspects(t["given"], t["soft"], k, shard_of=shard, max_shards=budget)
        assert chosen.tolist() == naive_top_suspects(t["given"], t["soft"], k, shard, budget)
        assert len(set(shard[chosen])) <= budget
    assert len(select.top_suspects(t["given"], t["soft"], 20, shard_of=shard, max_shards=2)) == 20


def shard_image(shard_dir: str, manifest: dict, index: int) -> np.ndarray:
    """The PNG of training sample ``index``, read with tarfile (a reference reader)."""
    for url in shardset.shard_urls(shard_dir, manifest, "train"):
        with tarfile.open(url) as tar:
            names = tar.getnames()
            if f"{index:08d}.png" in names:
                return np.asarray(Image.open(io.BytesIO(tar.extractfile(f"{index:08d}.png").read())).convert("RGB"))
    raise KeyError(index)


def test_thumbnails_read_only_the_shards_holding_them(fake_shards, monkeypatch):
    shard_dir = str(fake_shards)
    manifest = shardset.load_manifest(shard_dir)
    opened = []
    real = images.open_shard
    monkeypatch.setattr(images, "open_shard", lambda url: opened.append(url) or real(url))
    wanted = [3, 130, 131, 140]  # shards of 128: the first and the second
    thumbs, errors = images.read_thumbnails(shard_dir, manifest, wanted)
    assert not errors and sorted(thumbs) == wanted
    urls = shardset.shard_urls(shard_dir, manifest, "train")
    assert opened == urls[:2]
    for i in wanted:
        assert np.array_equal(np.asarray(thumbs[i]), shard_image(shard_dir, manifest, i))
    grid = suspects_grid(
        shard_dir, manifest, np.zeros(500, np.int64), np.eye(10)[np.arange(500) % 10], k=8, max_shards=1
    )
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
    with pytest.raises(PipelineError, match="outside"):
        images.shard_of(np.array([500]), manifest)


def fake_run(run_dir: Path, shard_dir: Path, *, known: bool = True, seed: int = 0) -> Path:
    """A finished run's files, made up: metrics.json and a corrected-label table over the fake shards."""
    manifest = shardset.load_manifest(shard_dir)
    lab = shardset.read_labels_table(shard_dir, manifest)
    n, c = len(lab["label"]), manifest["num_classes"]
    rng = np.random.default_rng(seed)
    soft = rng.dirichlet(np.ones(c), n)
    soft[np.arange(n), lab["true_label"]] += rng.random(n) * 2  # the corrector is mostly right
    soft /= soft.sum(1, keepdims=True)
    run_dir.mkdir(parents=True)
    write_corrected_labels(
        RunDir(run_dir).labels,
        keys=lab["key"],
        given=lab["label"],
        soft=soft,
        alpha=rng.random(n),
        beta=rng.random(n),
        true=lab["true_label"] if known else None,
        epoch=2,
    )
    epochs = [
        {
            "epoch": e,
            "phase": "warmup" if e == 1 else "mslc",
            "val_acc": 0.5 + 0.1 * e,
            "test_acc": 0.4 + 0.1 * e,
            "corrected_all": 0.6 + 0.05 * e if known else None,
        }
        for e in (1, 2, 3)
    ]
    metrics = {"config": Config().to_dict(), "shard_dir": str(shard_dir), "noise": manifest["noise"], "epochs": epochs}
    (RunDir(run_dir).metrics).write_text(json.dumps(metrics))
    return run_dir


def test_report_numbers_images_and_truth(fake_shards, tmp_path):
    for known in (True, False):
        run_dir = fake_run(tmp_path / f"run-{known}", fake_shards, known=known)
        run = load_run(run_dir)
        index = write_report(run, top=3)
        html = index.read_text()
        nums, srcs = page.read_page(html)
        assert f"the true one ({run['table']['est_correct_by']}; no true label" in html  # what est. right is from
        for key, v in parquet_numbers(RunDir(run_dir).labels, 10).items():
            assert nums[key] == pytest.approx(v), key
        assert srcs and len(srcs) == len(set(srcs))
        for src in srcs:
            with Image.open(index.parent / src) as im:
                im.load()
        assert sum(s.startswith("img/") for s in srcs) > 10
        truth = ("detect_precision", "label_acc_corrected", "true_noise_rate", "class0_true_noise_rate")
        assert all((k in nums) == known for k in truth)
        assert ("true: " in html) == known
        assert "unknown: no detection" in html or known


def test_a_failed_report_leaves_the_old_one_whole(fake_shards, tmp_path):
    run_dir = fake_run(tmp_path / "run", fake_shards)
    old = write_report(load_run(run_dir), top=2).read_text()
    run = load_run(run_dir)
    first = Path(shardset.shard_urls(str(fake_shards), run["manifest"], "train")[0])
    first.write_bytes(first.read_bytes()[:5000])  # truncated
    with pytest.raises(ShardError, match=first.name):
        write_report(run, top=2)
    assert (RunDir(run_dir).report).read_text() == old
    assert sorted(p.name for p in run_dir.iterdir()) == ["corrected_labels.parquet", "metrics.json", "report"]


def test_report_command_keeps_an_edited_relabel_file(fake_shards, tmp_path, capsys):
    from pipeline.report import main

    assert main([str(tmp_path / "nowhere")]) == 1
    assert "nowhere/metrics.json: not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--top", "0"])
    run_dir = fake_run(tmp_path / "run", fake_shards)
    assert main([str(run_dir), "--top", "2"]) == 0
    relabel = RunDir(run_dir).relabel
    edited = relabel.read_text().splitlines()[:3]
    relabel.write_text("\n".join(edited) + "\n")
    assert main([str(run_dir), "--top", "3"]) == 0 and relabel.read_text().splitlines() == edited
    assert "kept as it is" in capsys.readouterr().out
    assert main([str(run_dir), "--threshold", "0.5"]) == 1
    assert "relabel.csv exists" in capsys.readouterr().err and relabel.read_text().splitlines() == edited
    out = tmp_path / "confident.csv"
    assert main([str(run_dir), "--threshold", "0.5", "--relabel-out", str(out)]) == 0
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert rows and all(float(r["confidence"]) >= 0.5 for r in rows)
    assert len(rows) == len(select.relabel_rows(load_run(run_dir)["table"], threshold=0.5))


def test_relabel_file_round_trips_through_the_shard_writer(fake_data_cfg, fake_shards, tmp_path):
    run = load_run(fake_run(tmp_path / "run", fake_shards))
    path = write_relabel(run, threshold=0.3)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    t = run["table"]
    expect = select.relabel_rows(t, threshold=0.3)
    assert [r["key"] for r in rows] == [t["key"][i] for i in expect] and rows
    assert all(float(r["confidence"]) >= 0.3 and r["label"] != r["given_label"] for r in rows)
    again = ensure_shards(replace(fake_data_cfg, labels_file=str(path)), raw=fake_images(), log=lambda s: None)
    before = shardset.read_labels_table(str(fake_shards), run["manifest"])
    after = shardset.read_labels_table(again, shardset.load_manifest(again))
    assert list(after["key"]) == list(before["key"])
    want = dict(zip(before["key"], before["label"]))
    want.update({r["key"]: int(r["label"]) for r in rows})
    assert after["label"].tolist() == [want[k] for k in after["key"]]


def test_the_clean_split_calibration_against_a_naive_count():
    """:func:`mslc.metrics.clean_split_calibration` by hand on a 3-class case: every clean sample
    given every label with its transition weight; the flags' estimate and truth per bin."""
    from mslc.metrics import calibrate, clean_split_calibration, label_posterior

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), 40)
    labels = rng.integers(0, 3, 40)
    t = np.array([[0.7, 0.3, 0.0], [0.0, 0.8, 0.2], [0.1, 0.0, 0.9]])
    bins = clean_split_calibration(probs, labels, t)
    rows = []
    for i in range(40):
        for g in range(3):
            post = label_posterior(probs[i : i + 1], np.array([g]), t)[0]
            k = int(post.argmax())
            if k != g and t[labels[i], g] > 0:
                rows.append((post[k], float(k == labels[i]), t[labels[i], g]))
    for b in bins:
        mine = [(e, r, w) for e, r, w in rows if b["lo"] <= e < b["hi"]]
        wt = sum(w for _, _, w in mine)
        assert b["weight"] == pytest.approx(wt)
        assert b["n_eff"] == pytest.approx(wt * wt / sum(w * w for _, _, w in mine) if mine else 0.0)
        if wt:
            assert b["estimated"] == pytest.approx(sum(e * w for e, _, w in mine) / wt)
            assert b["true"] == pytest.approx(sum(r * w for _, r, w in mine) / wt)
    est = np.array([0.55, 0.97, 0.3])
    moved = calibrate(est, bins, min_weight=0.0)
    for e, m in zip(est, moved):
        b = next(b for b in bins if b["lo"] <= e < b["hi"])
        want = e if not b["weight"] else min(1.0, max(0.0, e - (b["estimated"] - b["true"])))
        assert m == pytest.approx(want)


def naive_precision_se(conf, flagged, where, bins, thresholds, min_weight=10.0, est=None, z=None):
    """Sample by sample: each flag carries its bin's variance; flags of one bin are fully
    correlated, different bins independent; with ``est``, a light bin's variance at most
    (its flags' mean estimate / z)²."""
    out = []
    for th in thresholds:
        mine = [(w, e) for c, f, w, e in zip(conf, flagged, where, est if est is not None else conf) if f and c >= th]
        var = 0.0
        for j, b in enumerate(bins):
            in_b = [e for w, e in mine if w == j]
            if not in_b:
                continue
            n = b["n_eff"]
            if b["weight"] >= min_weight and n > 0:
                p = (b["true"] * n + 1) / (n + 2)
                v = p * (1 - p) / n
            else:
                v = 0.25 / max(n, 1.0)
                if est is not None:
                    v = min(v, (sum(in_b) / len(in_b) / z) ** 2)
            var += (len(in_b) / len(mine)) ** 2 * v
        out.append(var**0.5)
    return out


def test_precision_se_against_a_naive_sum():
    from mslc.metrics import calibration_bin, precision_se

    rng = np.random.default_rng(1)
    bins = [
        {"lo": 0.0, "hi": 0.5, "weight": 4.0, "n_eff": 3.2, "estimated": 0.4, "true": 0.5},
        {"lo": 0.5, "hi": 0.9, "weight": 80.0, "n_eff": 60.0, "estimated": 0.7, "true": 0.75},
        {"lo": 0.9, "hi": 1.0001, "weight": 300.0, "n_eff": 250.0, "estimated": 0.97, "true": 1.0},
    ]
    est = rng.random(500)
    where = calibration_bin(est, bins)
    assert where.tolist() == [0 if e < 0.5 else 1 if e < 0.9 else 2 for e in est]
    conf, flagged = rng.random(500), rng.random(500) < 0.6
    t = np.round(np.arange(0.0, 1.0, 0.05), 2)
    got = precision_se(conf, flagged, where, bins)
    assert got == pytest.approx(naive_precision_se(conf, flagged, where, bins, t))
    assert (got > 0).all()  # also where every validation flag of a bin was right
    assert precision_se(conf, flagged, np.full(500, -1), bins) == pytest.approx(0.0)  # uncalibrated: no error counted
    assert precision_se(conf, np.zeros(500, bool), where, bins) == pytest.approx(0.0)
    # the light bin 0 (weight 4) holds flags estimated 2% right: capped, they count at worst as all wrong
    small = np.where(where == 0, 0.02, est)
    capped = precision_se(conf, flagged, where, bins, estimate=small, z=2.0)
    assert capped == pytest.approx(naive_precision_se(conf, flagged, where, bins, t, est=small, z=2.0))
    assert (capped <= got + 1e-12).all() and (capped < got).any()


def test_budget_cuts_on_the_lower_bound():
    """With a calibration the cut is the lowest threshold whose 95% lower bound (all cuts at
    once) is at least the target: here the estimate passes 0.95 from 0.5 up, the bound only higher."""
    from mslc.metrics import LOWER_BOUND_Z

    n = 400
    prob = np.linspace(0.3, 1.0, n)
    t = {
        "given": np.zeros(n, np.int64),
        "corrected": np.ones(n, np.int64),
        "prob": prob,
        "est_correct": np.where(prob >= 0.5, 0.96, 0.5),
        "est_correct_by": "transition posterior, calibrated on the clean validation split",
        "true": np.full(n, -1),
        "calibration_bin": np.where(prob >= 0.8, 1, 0),
        "calibration": [
            {"lo": 0.0, "hi": 0.9, "weight": 40.0, "n_eff": 40.0, "estimated": 0.9, "true": 0.9},
            {"lo": 0.9, "hi": 1.0001, "weight": 4000.0, "n_eff": 4000.0, "estimated": 0.97, "true": 0.96},
        ],
    }
    b = select.budget(t)
    for r in b["rows"]:
        assert r["lower"] == pytest.approx(r["precision"] - LOWER_BOUND_Z * r["se"])
    plain = select.budget({**t, "calibration": None})
    assert plain["threshold"] == 0.5 and "lower" not in plain["rows"][0]
    assert b["threshold"] > 0.5 and all(r["lower"] >= 0.95 for r in b["rows"] if r["threshold"] >= b["threshold"])
    below = [r for r in b["rows"] if r["threshold"] < b["threshold"]]
    assert below[-1]["lower"] < 0.95 <= below[-1]["precision"]
    low = select.relabel_lower(t, b["threshold"], 0.96)
    cut = next(r for r in b["rows"] if r["threshold"] == b["threshold"])
    assert low == pytest.approx(cut["lower"]) and select.relabel_lower({**t, "calibration": None}, 0.5, 0.96) is None


def test_the_bound_reads_the_lower_of_the_estimate_and_its_out_of_sample_check():
    """Where the out-of-sample estimate (est_cautious) is lower, the bound starts from it and the
    cut moves up; where it is higher, the bound is the estimate's own. The published estimate
    (precision) is est_correct either way, and a user's own cut is bounded the same way."""
    from mslc.metrics import LOWER_BOUND_Z

    n = 400
    prob = np.linspace(0.3, 1.0, n)
    est = np.where(prob >= 0.5, 0.985, 0.5)
    t = {
        "given": np.zeros(n, np.int64),
        "corrected": np.ones(n, np.int64),
        "prob": prob,
        "est_correct": est,
        "est_cautious": np.where(prob >= 0.8, 0.99, est - 0.15),
        "est_correct_by": "held-out transition posterior (2 cross-fitted models), calibrated on the clean validation split",
        "true": np.full(n, -1),
        "calibration_bin": np.zeros(n, np.int64),
        "calibration": [{"lo": 0.0, "hi": 1.0001, "weight": 4000.0, "n_eff": 4000.0, "estimated": 0.9, "true": 0.9}],
    }
    b, alone = select.budget(t), select.budget({**t, "est_cautious": est})
    for r, a in zip(b["rows"], alone["rows"]):
        assert r["precision"] == a["precision"] and r["cautious"] <= 0.99 + 1e-9
        assert r["lower"] == pytest.approx(min(r["precision"], r["cautious"]) - LOWER_BOUND_Z * r["se"])
    assert alone["threshold"] == 0.5 and b["threshold"] == 0.8
    cut = next(r for r in b["rows"] if r["threshold"] == 0.6)
    assert cut["lower"] < 0.95 and select.relabel_lower(t, 0.6, cut["precision"]) == pytest.approx(cut["lower"])


def test_a_failing_higher_cut_does_not_block_a_lower_one_under_the_bound():
    """The bound holds for every cut at once, so the lowest cut that passes is taken even where a
    higher one fails (flags at the top of the confidence scale estimated mostly wrong, as at
    class flips); the estimate alone has no such guarantee and keeps the every-higher rule."""
    n = 400
    prob = np.linspace(0.3, 1.0, n)
    est = np.where(prob >= 0.99, 0.3, np.where(prob >= 0.6, 0.99, 0.5))
    t = {
        "given": np.zeros(n, np.int64),
        "corrected": np.ones(n, np.int64),
        "prob": prob,
        "est_correct": est,
        "est_correct_by": "transition posterior, calibrated on the clean validation split",
        "true": np.full(n, -1),
        "calibration_bin": np.zeros(n, np.int64),
        "calibration": [{"lo": 0.0, "hi": 1.0001, "weight": 4000.0, "n_eff": 4000.0, "estimated": 0.9, "true": 0.9}],
    }
    b = select.budget(t)
    rows = {r["threshold"]: r for r in b["rows"]}
    assert rows[0.95]["lower"] < 0.95 and rows[0.6]["lower"] >= 0.95 and rows[0.55]["lower"] < 0.95
    assert b["threshold"] == 0.6
    assert select.budget({**t, "calibration": None})["threshold"] == 1.0  # the estimate alone: every higher must pass


def test_read_table_names_a_broken_calibration(tmp_path):
    """A table whose calibration metadata or calibration_bin column does not hold together is
    refused with the file and the field named, not read into a wrong lower bound."""
    import pyarrow.parquet as pq

    from mslc.metrics import precision_se

    rng = np.random.default_rng(0)
    n, c = 30, 3
    soft = rng.dirichlet(np.ones(c), n)
    bins = [
        {"lo": 0.0, "hi": 0.5, "weight": 20.0, "n_eff": 15.0, "estimated": 0.4, "true": 0.5},
        {"lo": 0.5, "hi": 1.0001, "weight": 50.0, "n_eff": 40.0, "estimated": 0.8, "true": 0.75},
    ]
    path = write_corrected_labels(
        tmp_path / "t.parquet",
        keys=np.arange(n),
        given=rng.integers(0, c, n),
        soft=soft,
        alpha=rng.random(n),
        beta=rng.random(n),
        true=None,
        y_hat=soft,
        transition=np.full((c, c), 1 / c),
        calibration=bins,
    )
    t = select.read_table(path)
    assert t["calibration"] == bins and set(t["calibration_bin"].tolist()) <= {0, 1}
    table = pq.read_table(path)
    for meta, col, field in (
        (b"not json", None, "est_correct_calibration"),
        (json.dumps([{"lo": 0.0}]).encode(), None, "est_correct_calibration"),
        (json.dumps(bins[:1]).encode(), None, "calibration_bin"),
    ):
        bad = table.replace_schema_metadata({**table.schema.metadata, b"est_correct_calibration": meta})
        pq.write_table(bad, tmp_path / "bad.parquet")
        with pytest.raises(PipelineError, match=f"bad.parquet.*{field}"):
            select.read_table(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="calibration bins"):
        precision_se(np.ones(3), np.ones(3, bool), np.array([0, 1, 2]), bins)
