"""End to end through Ray Train: ``pipeline/train.py --config smoke`` on real Fashion-MNIST
produces every output a user takes away."""

import json
import re
import struct
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mslc.metrics import LOWER_BOUND_Z, precision_se
from mslc.models import SmallCNN
from pipeline.prep.fashion_mnist import fmnist_files
from pipeline.rundir import RunDir
from tests.conftest import ROOT, ray_env


def read_event_tags(path):
    """Tags in a TensorBoard event file (TFRecord framing, tensorboardX's protobufs)."""
    from tensorboardX.proto import event_pb2

    data, pos, tags = path.read_bytes(), 0, {}
    while pos < len(data):
        (n,) = struct.unpack("<Q", data[pos : pos + 8])
        ev = event_pb2.Event()
        ev.ParseFromString(data[pos + 12 : pos + 12 + n])
        pos += 16 + n
        for v in ev.summary.value:
            kind = "image" if v.HasField("image") else "histo" if v.HasField("histo") else "scalar"
            tags.setdefault(v.tag, set()).add((kind, ev.step))
    return tags


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    if fmnist_files(ROOT / "data" / "raw") is None:
        pytest.fail("Fashion-MNIST is missing: run `make data` (the Makefile's test target does)")
    tmp = tmp_path_factory.mktemp("ray")
    env = ray_env()
    out = subprocess.run(
        [
            sys.executable,
            "pipeline/train.py",
            "--config",
            "smoke",
            f"data.shard_root={tmp / 'shards'}",
            f"run.storage_path={tmp / 'runs'}",
            "run.name=smoke-e2e",
            "run.keep_checkpoints=0",
            "run.log_every_s=0.2",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (tmp / "stderr.txt").write_text(out.stderr)
    return tmp / "runs" / "smoke-e2e", out.stdout


def test_console_progress_and_paths(smoke_run):
    run_dir, stdout = smoke_run
    assert [ln.count("epoch   1/3") for ln in stdout.splitlines() if "epoch   1/3" in ln] == [1]
    inside = [
        ln
        for ln in stdout.splitlines()
        if re.search(
            r"epoch [123]/3 step \d+/\d+: \d+ img/s, loss [\d.]+, "
            r"epoch ETA \d+:\d\d:\d\d, run ETA",
            ln,
        )
    ]
    assert inside, stdout[-2000:]  # progress inside epochs (run.log_every_s)
    assert "Reporting training result" not in stdout
    for what in ("model:", "tensorboard logs:", "corrected labels:", "metrics:", "relabel file:", "review report:"):
        assert what in stdout
    assert str(RunDir(run_dir).labels) in stdout
    err = (run_dir.parents[1] / "stderr.txt").read_text()
    for chatter in (
        "is illegal; using",
        "Checkpoint successfully created",
        "torch.jit.script` is deprecated",
        "Reporting training result",
    ):
        assert chatter not in stdout + err, chatter  # library chatter kept out of the console
    tail = stdout[stdout.rindex("\ndone in ") :]  # what the run found and what to do next, before the paths
    assert re.search(r"done in [\d.]+ min; exported: the (labels of epoch|mean soft labels of epochs) \d", tail)
    assert re.search(
        r"flags: \d+ of 1500 labels \([\d.]+%\) differ from the given ones; estimated [\d.]+% of "
        r"them right",
        tail,
    )
    if json.loads(RunDir(run_dir).budget.read_text())["relabel_rows"]:
        assert re.search(r"next: review relabel.csv \(\d+ flags with confidence >= [\d.]+, estimated", tail)
    else:  # no cut reached 95% with 95% confidence
        assert re.search(r"next: relabel.csv is empty: no cut's flags are estimated >= 95% right", tail)
    assert tail.index("next: ") < tail.index("run directory:")


ANSI = re.compile(r"\x1b\[[0-9;]*m")
WORKER = r"\((?:RayTrainWorker|TrainController) pid=\d+\) "
OURS = [  # every line the project prints on a run (driver, or a worker through Ray)
    r"run directory: \S+",
    r"checking that torch finds CUDA on a GPU node .+",  # GPU runs only
    r"writing shards for \S+ \.\.\.",  # shards written on the way, when missing
    r"\d+ shards: \d+ already complete, writing \d+ \(\d+ process\(es\)\) \.\.\.",
    r"wrote \d+ train / \d+ meta / \d+ val / \d+ test samples; .+",
    WORKER + r"compute: .+",
    WORKER + r"epoch +\d+/\d+ \[(warmup|mslc  )\] lr .+",
    WORKER + r"  epoch \d+/\d+ step \d+/\d+: .+",
    WORKER + r"exported labels: the (labels of epoch \d+|mean soft labels of epochs [\d, ]+), .+",
    WORKER + r"cross-fitting: \d+ models × \d+ passes over [\d,]+ samples \(held-out predictions .+\)",
    WORKER + r"cross-fitting (done in \d+ s|skipped: .+)",
    r"",
    r"done in .+",
    r"flags: .+",
    r"next: .+",
    r"(run directory|model|tensorboard logs|corrected labels|metrics|relabel file|review report): +\S.*",
]
RAY_STARTUP = [  # Ray's own lines while it starts a local instance and the worker group
    r"\S+ \S+\tWARNING authentication_token_setup\.py:\d+ -- Token authentication is enabled .+",
    r"\S+ \S+\tINFO worker\.py:\d+ -- Using address local set in the environment variable RAY_ADDRESS",
    r"\S+ \S+\tINFO worker\.py:\d+ -- Started a local Ray instance\..*",
    WORKER + r"Requesting resources: .+",
    WORKER + r"Attempting to start training worker group of size \d+ .+",
    WORKER + r"Setting up process group for: .+",
    WORKER + r"Started training worker group of size \d+: ?",
    WORKER + r"- \(ip=\S+, pid=\d+\) world_rank=\d+, local_rank=\d+, node_rank=\d+",
]


def test_the_console_holds_our_lines_after_rays_start_up(smoke_run):
    """Every console line (stdout and stderr) is one of ours or one of Ray's start-up lines,
    and Ray's come before the run's first line from a worker: nothing of Ray's (checkpoint
    chatter, warnings, tracebacks) between our lines, the summary last."""
    run_dir, stdout = smoke_run
    err = (run_dir.parents[1] / "stderr.txt").read_text()
    lines = [ANSI.sub("", ln).rstrip() for ln in (stdout + err).splitlines()]
    unknown = [ln for ln in lines if not any(re.fullmatch(p, ln) for p in OURS + RAY_STARTUP)]
    assert not unknown, unknown[:20]
    out = [ANSI.sub("", ln).rstrip() for ln in stdout.splitlines()]
    first_ours = next(i for i, ln in enumerate(out) if re.fullmatch(WORKER + r"compute: .+", ln))
    assert not [ln for ln in out[first_ours:] if any(re.fullmatch(p, ln) for p in RAY_STARTUP)]
    assert out[-1].startswith("review report:") or out[-1].startswith("relabel file:")


def test_checkpoint_per_epoch_with_everything_to_resume(smoke_run):
    run_dir, _ = smoke_run
    for epoch in (1, 2, 3):
        state = torch.load(run_dir / f"checkpoint_epoch_{epoch:04d}" / "state.pt", weights_only=True)
        assert state["epoch"] == epoch
        assert {"model", "opt_w", "sched", "corrector", "opt_theta", "bank", "steps_done", "rng"} <= set(state)
    model = SmallCNN(10, 1)
    model.load_state_dict(torch.load(RunDir(run_dir).model, weights_only=True))


def test_metrics_json(smoke_run):
    run_dir, _ = smoke_run
    m = json.loads((RunDir(run_dir).metrics).read_text())
    assert [e["epoch"] for e in m["epochs"]] == [1, 2, 3]
    assert [e["phase"] for e in m["epochs"]] == ["warmup", "mslc", "mslc"]
    s = m["summary"]
    vals = [e["val_acc"] for e in m["epochs"]]
    assert s["selected_epoch"] == 1 + int(np.argmax(vals))
    assert s["best_test_acc"] == m["epochs"][s["selected_epoch"] - 1]["test_acc"]
    assert s["last5_test_acc"] == pytest.approx(np.mean([e["test_acc"] for e in m["epochs"]]))
    assert 0.3 < m["noise"]["realized_rate"] < 0.42
    last = m["epochs"][-1]
    for k in ("corrected_all", "corrected_clean", "corrected_noisy", "alpha_clean", "alpha_noisy", "test_acc"):
        assert 0.0 <= last[k] <= 1.0


def test_corrected_label_table(smoke_run):
    run_dir, _ = smoke_run
    t = pq.read_table(RunDir(run_dir).labels).to_pydict()
    assert set(t) == {
        "index",
        "key",
        "given_label",
        "given_name",
        "given_prob",
        "corrected_label",
        "corrected_name",
        "corrected_prob",
        "flagged",
        "est_correct",
        "est_correct_cautious",
        "calibration_bin",
        "predicted_label",
        "predicted_prob",
        "review_rank",
        "alpha",
        "beta",
        "true_label",
        "is_noisy",
    }
    assert t["index"] == list(range(1500)) and len(set(t["key"])) == 1500
    assert all(0 <= c < 10 for c in t["corrected_label"])
    assert all(p is not None and 0.1 <= p <= 1.0 for p in t["corrected_prob"])
    classes = json.loads(pq.read_schema(RunDir(run_dir).labels).metadata[b"classes"])
    assert len(classes) == 10 and [classes[g] for g in t["given_label"]] == t["given_name"]
    assert [classes[c] for c in t["corrected_label"]] == t["corrected_name"]
    assert t["flagged"] == [g != c for g, c in zip(t["given_label"], t["corrected_label"])]
    assert all(
        0.0 <= v <= 1.0 for k in ("given_prob", "est_correct", "est_correct_cautious", "predicted_prob") for v in t[k]
    )
    assert all(g <= c + 1e-6 for g, c in zip(t["given_prob"], t["corrected_prob"]))  # the arg-max is the largest
    rank = np.asarray(t["review_rank"])
    assert sorted(rank) == list(range(1, 1501))
    by_rank = np.argsort(rank)
    n_flag = sum(t["flagged"])
    assert all(t["flagged"][i] for i in by_rank[:n_flag])  # flags first, least likely given label first
    assert np.all(np.diff(np.asarray(t["given_prob"])[by_rank[:n_flag]]) >= 0)
    assert all(a is not None for a in t["alpha"])  # every sample was visited by an MSLC step
    assert t["is_noisy"] == [g != y for g, y in zip(t["given_label"], t["true_label"])]
    # the exported labels: by default (run.export=auto, MSLC's window) the mean ỹ of the epochs after
    # the warm-up within one standard error of the best validation accuracy, and the files say so
    m = json.loads((RunDir(run_dir).metrics).read_text())
    after = [e for e in m["epochs"] if e["phase"] != "warmup"]
    best = max(e["val_acc"] for e in after)
    se = (best * (1 - best) / after[0]["val_samples"]) ** 0.5
    window = [e["epoch"] for e in after if e["val_acc"] >= best - se]
    meta = pq.read_schema(RunDir(run_dir).labels).metadata
    assert int(meta[b"labels_epoch"]) == m["summary"]["labels"]["epoch"] == window[-1]
    assert json.loads(meta[b"labels_epochs"]) == m["summary"]["labels"]["epochs"] == window
    assert np.mean(np.asarray(t["corrected_label"]) == np.asarray(t["true_label"])) == pytest.approx(
        m["summary"]["labels"]["corrected_all"]
    )


def test_budget_and_noise_matrix_files(smoke_run):
    """The truth-free estimates a run writes: columns and sums, and relabel.csv cut where the
    budget says (the estimated precision's 95% lower bound, all cuts at once, ≥ run.relabel_precision, 0.95)."""
    run_dir, _ = smoke_run
    t = pq.read_table(RunDir(run_dir).labels).to_pydict()
    flagged, n = sum(t["flagged"]), len(t["index"])
    b = json.loads((RunDir(run_dir).budget).read_text())
    assert b["target"] == 0.95 and b["estimated_by"] == (
        "held-out transition posterior (2 cross-fitted models), calibrated on the clean validation split"
    )  # run.crossfit_folds=2, the default
    bins = json.loads(pq.read_schema(RunDir(run_dir).labels).metadata[b"est_correct_calibration"])
    assert [b_["lo"] for b_ in bins] == [0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    assert [r["threshold"] for r in b["rows"]] == pytest.approx(np.arange(0, 1, 0.05))
    assert b["rows"][0]["flags"] == flagged
    assert all(a["flags"] >= c["flags"] for a, c in zip(b["rows"], b["rows"][1:]))
    est, cautious = np.asarray(t["est_correct"]), np.asarray(t["est_correct_cautious"])
    for r in b["rows"]:
        sel = np.asarray(t["flagged"]) & (np.asarray(t["corrected_prob"]) >= r["threshold"])
        assert r["flags"] == sel.sum()
        if sel.any():
            assert r["precision"] == pytest.approx(est[sel].mean(), rel=1e-5)
            assert r["cautious"] == pytest.approx(cautious[sel].mean(), rel=1e-5)
            assert r["right"] + r["wrong"] == pytest.approx(r["flags"])
    where = np.asarray(t["calibration_bin"])
    assert set(where.tolist()) <= set(range(len(bins)))  # every estimate was binned
    for r, se in zip(b["rows"], precision_se(t["corrected_prob"], t["flagged"], where, bins, estimate=est)):
        if r["flags"]:
            # the bound starts from the lower of the estimate and its out-of-sample check
            low = min(r["precision"], r["cautious"]) - LOWER_BOUND_Z * se
            assert r["se"] == pytest.approx(se) and r["lower"] == pytest.approx(low)
    cut = [r for r in b["rows"] if r["threshold"] == b["threshold"]]
    assert not cut or cut[0]["lower"] >= 0.95  # the cut: the lower bound reaches 95% ...
    assert all(r["lower"] < 0.95 for r in b["rows"] if r["threshold"] < b["threshold"] and r["flags"])  # the lowest
    rows = (RunDir(run_dir).relabel).read_text().splitlines()[1:]
    assert b["relabel_threshold"] == b["threshold"] and len(rows) == b["relabel_rows"]
    assert all(float(r.split(",")[2]) >= b["threshold"] for r in rows)
    m = json.loads((RunDir(run_dir).matrix).read_text())
    counts = np.asarray(m["counts"])
    assert counts.shape == (10, 10) and counts.sum() == n
    assert n - np.trace(counts) == flagged == sum(c["flagged"] for c in m["per_class"])
    assert np.allclose(np.asarray(m["rates"]).sum(1), 1.0, atol=1e-5)
    for c in m["per_class"]:
        lo, hi = c["interval95"]
        assert lo <= c["est_noise_rate"] <= hi and 0 <= lo and hi <= 1
    metrics = json.loads((RunDir(run_dir).metrics).read_text())
    e = metrics["epochs"]
    assert e[0]["churn"] is None and all(isinstance(x["churn"], int) for x in e[1:])
    if metrics["summary"]["labels"]["epochs"] == [metrics["summary"]["labels"]["epoch"]]:
        assert e[metrics["summary"]["labels"]["epoch"] - 1]["flags"] == flagged  # the exported epoch's count


def test_tensorboard_events(smoke_run):
    run_dir, _ = smoke_run
    files = list((RunDir(run_dir).tensorboard).glob("events.out.tfevents.*"))
    assert len(files) == 1
    tags = read_event_tags(files[0])
    for tag in (
        "train_loss",
        "test_acc",
        "val_acc",
        "corrected/all",
        "corrected/clean",
        "corrected/noisy",
        "alpha/clean",
        "alpha/noisy",
        "detect/precision",
        "detect/recall",
        "detect/f1",
        "flags",
        "churn",
    ):
        assert ("scalar", 3) in tags[tag], tag
    for tag in ("hist/alpha", "hist/beta", "hist/alpha_clean", "hist/alpha_noisy"):
        assert ("histo", 3) in tags[tag], tag
    assert any(kind == "scalar" for kind, _ in tags["step/train_loss"])  # step-level scalars inside epochs
    assert ("image", 0) in tags["confusion/given_vs_true"]
    assert ("image", 3) in tags["confusion/corrected_vs_true"]
    assert {("image", 2), ("image", 3)} <= tags["suspected_errors"]  # the grid, from the first MSLC epoch


def test_review_page_of_the_smoke_run(smoke_run):
    """The page rank 0 wrote: valid HTML, its numbers those of the Parquet table, every
    image it references there and decodable, and in headless Chromium not blank."""
    from PIL import Image

    from pipeline.review.browser import find_chromium, screenshot
    from pipeline.review.page import read_page
    from tests.helpers import parquet_numbers

    run_dir, _ = smoke_run
    index = RunDir(run_dir).report
    html = index.read_text()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    nums, srcs = read_page(html)
    for key, v in parquet_numbers(RunDir(run_dir).labels, 10).items():
        assert nums[key] == pytest.approx(v), key
    assert nums["flagged"] > 0 and sum(s.startswith("img/") for s in srcs) >= 10 * 16
    assert "budget.png" in srcs  # the review budget's chart
    budget = json.loads((RunDir(run_dir).budget).read_text())
    assert nums["budget_threshold"] == pytest.approx(budget["threshold"])
    for src in srcs:
        with Image.open(index.parent / src) as im:
            im.load()
    if find_chromium() is None:
        pytest.skip(
            "no Chromium on this machine (make test installs Debian's chromium when run as root): "
            "the page was checked, its rendering was not"
        )
    png = screenshot(index, run_dir / "shot.png", width=1000, height=1400)
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    assert pixels.shape == (1400, 1000)
    assert (pixels < 200).mean() > 0.02 and pixels.std() > 20  # text, tables and charts, not an empty page


def test_relabel_file_round_trip_through_prepare(smoke_run, tmp_path):
    """prepare.py --labels RELABEL.csv: the flagged rows get their corrected label. The run's own
    relabel.csv keeps only flags estimated ≥ 95% right, which a 3-epoch smoke run may not have: the
    round trip takes every flag (threshold 0, as ``pipeline/report.py --threshold 0`` writes it)."""
    from pipeline.review.report import load_run, write_relabel

    run_dir, _ = smoke_run
    assert RunDir(run_dir).relabel.read_text().startswith("key,label,confidence")
    relabel = write_relabel(load_run(run_dir, None), threshold=0.0, path=tmp_path / "relabel-all.csv")
    rows = relabel.read_text().splitlines()
    assert rows[0].startswith("key,label,confidence") and len(rows) > 1
    out = subprocess.run(
        [
            sys.executable,
            "pipeline/prepare.py",
            "--config",
            "smoke",
            f"data.shard_root={tmp_path}",
            f"data.labels_file={relabel}",
        ],
        cwd=ROOT,
        env=ray_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    new = pq.read_table(next(tmp_path.glob("*/train-labels.parquet"))).to_pydict()
    t = pq.read_table(RunDir(run_dir).labels).to_pydict()
    assert new["key"] == t["key"]
    flagged = {k: c for k, g, c in zip(t["key"], t["given_label"], t["corrected_label"]) if g != c}
    assert len(flagged) == len(rows) - 1
    assert new["label"] == [flagged.get(k, g) for k, g in zip(t["key"], t["given_label"])]


def test_an_elastic_group_shrinks_when_a_node_is_lost_and_finishes(tmp_path, monkeypatch):
    """``scale.workers=1-2`` on a cluster of a head that runs no work and two 1-CPU nodes:
    the last rank's node is taken away mid-epoch (as a spot preemption would). Ray Train
    restarts the group with the 1 worker the cluster can still hold, which resumes from
    the checkpoint inside the epoch (the bank re-sharded); every epoch still trains on
    every sample once and the table has every sample with α set."""
    import threading
    import time

    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("MSLC_CRASH_HOLD_S", "600")  # the dying rank waits until its node is gone
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    run_dir = tmp_path / "runs" / "elastic"
    marker = run_dir / ".crash-injected"
    removed: list[str] = []

    def preempt():  # the node of the rank that reached scale.crash_at_step goes away, once Ray
        # has registered the checkpoint before it (Ray Train's snapshot of its checkpoints)
        snapshot = run_dir / "checkpoint_manager_snapshot.json"
        while not (
            marker.exists()
            and "on node" in marker.read_text()
            and snapshot.exists()
            and "checkpoint_epoch_0002_step_000004" in snapshot.read_text()
        ):
            if stop.is_set():
                return
            time.sleep(0.2)
        node_id = marker.read_text().split("on node ")[1].split()[0]
        node = next(n for n in nodes if n.node_id == node_id)
        cluster.remove_node(node, allow_graceful=False)
        removed.append(node_id)

    stop = threading.Event()
    watcher = threading.Thread(target=preempt, daemon=True)
    watcher.start()
    try:
        out = subprocess.run(
            [
                sys.executable,
                "pipeline/train.py",
                "--config",
                "smoke",
                f"data.shard_root={tmp_path / 'shards'}",
                f"run.storage_path={tmp_path / 'runs'}",
                "run.name=elastic",
                "scale.workers=1-2",
                "scale.max_failures=3",
                "scale.crash_at_step=18",
                "run.checkpoint_every_steps=4",
                "run.tensorboard=false",
                "run.log_every_s=0",
            ],
            cwd=ROOT,
            env={**ray_env(), "RAY_ADDRESS": cluster.address},
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        stop.set()
        cluster.shutdown()
    console = out.stdout + out.stderr
    (run_dir / "console.txt").write_text(console)
    assert out.returncode == 0, console[-4000:]
    assert removed, console[-2000:]
    assert marker.read_text().startswith("rank 1 crashed at step 18")
    # 12 steps an epoch on 2 workers: the checkpoint at run step 16 is epoch 2's step 4
    assert "resumed inside epoch 2 at its step 4 (run step 16) from a checkpoint of 2 worker(s); now 1" in console
    m = json.loads((RunDir(run_dir).metrics).read_text())
    assert [e["epoch"] for e in m["epochs"]] == [1, 2, 3]
    assert all(e["samples"] == 1500 for e in m["epochs"])  # each epoch trains on every sample once
    assert m["epochs"][2]["steps"] == 24  # epoch 3 on one worker: 1500 samples in batches of 64
    t = pq.read_table(RunDir(run_dir).labels).to_pydict()
    assert t["index"] == list(range(1500))
    assert all(p is not None and p > 0.1 for p in t["corrected_prob"])  # no all-zero soft label
    assert all(a is not None for a in t["alpha"])


def test_clothing1m_preset_on_a_fake_release_tree_with_two_workers(tmp_path):
    """prepare clothing1m on a fake release tree, then the clothing1m preset with a tiny
    model on 2 Ray workers: outputs keyed by image path, metrics on the known-true part."""
    from tests import fakes

    tree = fakes.make_clothing1m(tmp_path / "clothing1m")
    env = ray_env()
    shard_dir = tmp_path / "c1m-shards"
    prep = subprocess.run(
        [
            sys.executable,
            "pipeline/prepare.py",
            "clothing1m",
            "--raw",
            str(tree.root),
            "--out",
            str(shard_dir),
            "--n-meta",
            "28",
            "--shard-size",
            "64",
            "--workers",
            "2",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert prep.returncode == 0, prep.stderr
    out = subprocess.run(
        [
            sys.executable,
            "pipeline/train.py",
            "--config",
            "clothing1m",
            f"data.shards={shard_dir}",
            "model.arch=small-cnn",
            "model.pretrained=false",
            "data.image_size=32",
            "data.loader_workers=1",
            "data.shuffle_buffer=64",
            "scale.workers=2",
            "optim.epochs=3",
            "optim.milestones=[3]",
            "optim.lr=0.05",
            "optim.batch_size=16",
            "meta.warmup_epochs=1",
            "meta.meta_batch_size=16",
            "scale.use_gpu=false",
            f"run.storage_path={tmp_path / 'runs'}",
            "run.name=c1m",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run_dir = tmp_path / "runs" / "c1m"
    m = json.loads((RunDir(run_dir).metrics).read_text())
    assert [e["phase"] for e in m["epochs"]] == ["warmup", "mslc", "mslc"]
    assert all(e["samples"] == 280 for e in m["epochs"])
    assert all(0.0 <= e["val_acc"] <= 1.0 and 0.0 <= e["test_acc"] <= 1.0 for e in m["epochs"])
    assert 0.0 <= m["epochs"][-1]["corrected_all"] <= 1.0  # over the 30 samples with a clean label
    t = pq.read_table(RunDir(run_dir).labels).to_pydict()
    assert t["key"] == tree.noisy_train
    assert sum(v is not None for v in t["true_label"]) == 30
    assert all(a is not None for a in t["alpha"])
    sd = torch.load(RunDir(run_dir).model, weights_only=True)
    assert sd["head.3.weight"].shape == (14, 128)
    # checkpoint retention under Ray: the latest 2 epochs (the default), and the best on validation
    kept = sorted(p.name for p in run_dir.glob("checkpoint_epoch_*"))
    assert kept == ["checkpoint_epoch_0002", "checkpoint_epoch_0003"]
    best = torch.load(run_dir / "checkpoint_best" / "state.pt", weights_only=True)
    assert best["epoch"] == m["summary"]["selected_epoch"]
    # the review of an RGB data set keyed by paths, its truth known for 30 samples, from 2 workers
    from PIL import Image

    from pipeline.review.page import read_page

    html = (RunDir(run_dir).report).read_text()
    nums, srcs = read_page(html)
    assert nums["samples"] == 280 and nums["known"] == 30 and "detect_f1" in nums
    assert sum(s.startswith("img/") for s in srcs) > 14
    for src in srcs:
        with Image.open(RunDir(run_dir).report_dir / src) as im:
            im.load()
            assert not src.startswith("img/") or (im.mode == "RGB" and max(im.size) <= 128), src
    keys = [line.split(",")[0] for line in (RunDir(run_dir).relabel).read_text().splitlines()[1:]]
    assert set(keys) <= set(tree.noisy_train)
