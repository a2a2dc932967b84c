"""Every ``meta.method`` runs through the same worker loop on fake shards: the phases it
should have, finite losses, its labels in the bank, and a bit-identical resume for the
methods that keep state of their own."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.training.methods.registry import METHODS
from pipeline.training.run.checkpoint import LocalReporter
from pipeline.training.settings.cli import load_config
from pipeline.training.settings.config import apply_overrides
from pipeline.worker import run
from tests.helpers import smoke_cfg


def quiet(_):
    pass


EXPECTED_PHASES = {
    "mslc": ["warmup", "mslc", "mslc"],
    "ce": ["ce"] * 3,
    "gce": ["gce"] * 3,
    "finetune": ["ce", "ce", "finetune"],
    "glc": ["warmup", "glc", "glc"],
    "mwnet": ["warmup", "mwnet", "mwnet"],
    "bootstrap-soft": ["warmup", "bootstrap-soft", "bootstrap-soft"],
    "bootstrap-hard": ["warmup", "bootstrap-hard", "bootstrap-hard"],
    "joint-opt": ["warmup", "joint-opt", "joint-opt"],
    "u-correction": ["warmup", "u-correction", "u-correction"],
}


def test_phases_per_method():
    for m in METHODS:
        cfg = load_config("smoke", [f"meta.method={m}", "optim.epochs=3", "meta.warmup_epochs=1"])
        method = METHODS[m](cfg, torch.device("cpu"))
        assert [method.phase(e) for e in (1, 2, 3)] == EXPECTED_PHASES[m], m


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("mslc", "ce")])
def test_every_baseline_trains_and_hands_back_labels(method, fake_shards, fake_data_cfg, tmp_path):
    cfg = smoke_cfg(fake_data_cfg, tmp_path, method, 3)
    cfg = apply_overrides(cfg, [f"meta.method={method}"])
    res = run(cfg, LocalReporter(tmp_path / method), log=quiet)
    final = res["summary"]["final"]
    assert final["phase"] == EXPECTED_PHASES[method][-1]
    assert np.isfinite(final["train_loss"]) and 0.0 <= final["val_acc"] <= 1.0
    t = pq.read_table(res["corrected_labels"]).to_pydict()
    assert t["index"] == list(range(500))
    probs = np.asarray(t["corrected_prob"], dtype=float)
    assert np.all(probs > 0) and np.all(probs <= 1.0 + 1e-6)
    if method == "mwnet":
        assert np.isfinite(final["meta_loss"])
    if method in ("bootstrap-soft", "bootstrap-hard", "u-correction", "joint-opt"):
        assert (probs < 0.999).any()  # the table holds its targets, not the given one-hots


@pytest.mark.parametrize("method", ["mwnet", "glc", "u-correction"])
def test_resume_equivalence_for_stateful_baselines(method, fake_shards, fake_data_cfg, tmp_path):
    def cfg(name, epochs):
        return apply_overrides(smoke_cfg(fake_data_cfg, tmp_path, name, epochs), [f"meta.method={method}"])

    full = run(cfg("full", 3), LocalReporter(tmp_path / "full"), log=quiet)
    run(cfg("part", 2), LocalReporter(tmp_path / "part"), log=quiet)
    ckpt = tmp_path / "part" / "checkpoints" / "epoch_0002"
    resumed = run(cfg("part", 3), LocalReporter(tmp_path / "part", resume_from=ckpt), log=quiet)
    a = torch.load(full["model"], weights_only=True)
    b = torch.load(resumed["model"], weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert pq.read_table(full["corrected_labels"]).equals(pq.read_table(resumed["corrected_labels"]))


def test_the_registry_names_each_method_once():
    assert list(METHODS) == [cls.name for cls in METHODS.values()]
    assert len({cls.label for cls in METHODS.values()}) == len(METHODS)
    assert [m for m, cls in METHODS.items() if not cls.uses_warmup] == ["ce", "finetune", "gce"]
    assert [m for m, cls in METHODS.items() if not cls.writes_labels] == ["ce", "finetune", "gce"]


def test_config_validation_asks_the_method():
    from pipeline.training.settings.config import ConfigError

    with pytest.raises(ConfigError, match=r"meta.warmup_epochs \(3\) must be < optim.epochs \(3\)"):
        load_config("smoke", ["meta.method=glc", "meta.warmup_epochs=3"])
    load_config("smoke", ["meta.method=gce", "meta.warmup_epochs=3"])  # no warm-up: not its concern
    with pytest.raises(ConfigError, match=r"finetune.epochs \(3\) must be < optim.epochs"):
        load_config("smoke", ["meta.method=finetune", "finetune.epochs=3"])
    with pytest.raises(ConfigError, match="meta.method must be one of"):
        load_config("smoke", ["meta.method=nope"])


def test_a_new_method_is_one_class_and_one_registry_line(monkeypatch, fake_shards, fake_data_cfg, tmp_path):
    """Label smoothing, added as a contributor would: the config accepts it, --help lists it,
    the loop trains it after the warm-up, and its targets are the exported labels."""
    import torch.nn.functional as F

    from mslc.meta_step import StepResult, real_step, soft_cross_entropy
    from pipeline.training.methods.registry import Method
    from pipeline.training.settings import cli

    class LabelSmoothing(Method):
        """CE to the given label smoothed by 0.1."""

        name, label = "label-smoothing", "Label smoothing"

        def train_step(self, st, data, b):
            logits = st.model(b.x)
            p = F.softmax(logits.detach(), 1)
            target = 0.9 * F.one_hot(b.y, p.shape[1]).to(p.dtype) + 0.1 / p.shape[1]
            loss = real_step(st.model, soft_cross_entropy(logits, target), opt_w=st.opt_w)
            return StepResult(loss, torch.tensor(float("nan")), p, target)

    monkeypatch.setitem(METHODS, "label-smoothing", LabelSmoothing)
    assert re.search(r"\n  label-smoothing +CE to the given label smoothed by 0.1.\n", cli._key_table())
    cfg = apply_overrides(smoke_cfg(fake_data_cfg, tmp_path, "ls", 2), ["meta.method=label-smoothing"])
    res = run(cfg, LocalReporter(tmp_path / "ls"), log=quiet)
    assert [h["phase"] for h in json_epochs(res)] == ["warmup", "label-smoothing"]
    probs = np.asarray(pq.read_table(res["corrected_labels"]).to_pydict()["corrected_prob"])
    np.testing.assert_allclose(probs, 0.91, rtol=1e-6)  # its target's top entry, for every sample


def json_epochs(result):
    import json

    return json.loads(Path(result["metrics"]).read_text())["epochs"]


def test_trusted_batch_size_follows_the_passes_and_the_data_sizes():
    """mslc.trusted_passes: each clean meta sample about that many times an epoch, so the
    per-step count scales with meta / train (at least 1, at most the batch)."""
    from pipeline.training.methods.state import trusted_batch_size

    assert trusted_batch_size(10, meta=1000, train=10000, batch=128) == 128
    assert trusted_batch_size(10, meta=1000, train=58000, batch=128) == 22
    assert trusted_batch_size(10, meta=7000, train=1_000_000, batch=32) == 2
    assert trusted_batch_size(10, meta=100, train=10**7, batch=64) == 1
    assert trusted_batch_size(50, meta=1000, train=1000, batch=64) == 64
    assert trusted_batch_size(0, meta=1000, train=10000, batch=128) == 0


def test_trusted_training_and_the_transition_estimate_in_a_run(fake_shards, fake_data_cfg, tmp_path):
    """The recommended MSLC: a trusted sampler of its own over the meta set, drawing
    independently of the meta loss's; the transition estimated once, at the first MSLC
    epoch, from the warm-up's model, and kept in the checkpoint (method and corrector)."""
    from pipeline.training.methods.state import build_data, build_state, trusted_batch_size
    from tests.helpers import RECOMMENDED

    cfg = smoke_cfg(fake_data_cfg, tmp_path, "trusted", 2, RECOMMENDED)
    data = build_data(cfg, torch.device("cpu"))
    st = build_state(cfg, data, torch.device("cpu"))
    want = trusted_batch_size(
        10, meta=len(data.meta_y), train=data.manifest["splits"]["train"]["count"], batch=cfg.optim.batch_size
    )
    assert st.trusted is not None and st.trusted.batch_size == min(want, len(data.meta_y))
    st.meta.reset(1), st.trusted.reset(2)
    assert not torch.equal(st.meta.next()[1], st.trusted.next()[1][: st.meta.batch_size])
    for off in (["mslc.trusted_passes=0"], ["meta.method=glc"]):
        assert build_state(apply_overrides(cfg, off), data, torch.device("cpu")).trusted is None
    res = run(cfg, LocalReporter(tmp_path / "trusted"), log=quiet)
    state = torch.load(tmp_path / "trusted" / "checkpoints" / "epoch_0002" / "state.pt", weights_only=True)
    c_hat = state["method"]["c_hat"]
    assert c_hat.shape == (10, 10) and torch.allclose(c_hat.sum(1), torch.ones(10))
    torch.testing.assert_close(state["corrector"]["transition"], c_hat)
    assert res["summary"]["final"]["phase"] == "mslc" and np.isfinite(res["summary"]["final"]["meta_loss"])


@pytest.mark.parametrize("method, has_corrector", [("mslc", True), ("ce", False), ("glc", False), ("mwnet", False)])
def test_only_a_method_that_trains_a_corrector_builds_one(method, has_corrector, fake_shards, fake_data_cfg, tmp_path):
    from pipeline.training.methods.registry import build_method
    from pipeline.training.methods.state import build_data, build_state

    cfg = apply_overrides(smoke_cfg(fake_data_cfg, tmp_path, "c", 2), [f"meta.method={method}"])
    st = build_state(cfg, build_data(cfg, torch.device("cpu")), torch.device("cpu"))
    st.method = build_method(cfg, torch.device("cpu"))
    assert (st.corrector is not None, st.opt_theta is not None) == (has_corrector, has_corrector)
    assert (st.state_dict()["corrector"] is not None) == has_corrector


def test_run_export_window_exports_the_mean_of_the_window_epochs(fake_shards, fake_data_cfg, tmp_path):
    """run.export=window: the Parquet's ỹ is the mean of the kept epochs' soft labels, which
    are the epochs label_window picks from the history; the files and the summary name them."""
    import json

    from pipeline.training.run.outputs import label_window

    cfg = smoke_cfg(fake_data_cfg, tmp_path, "win", 4, ["run.export=window", "run.export_soft=true"])
    lines = []
    res = run(cfg, LocalReporter(tmp_path / "win"), log=lines.append)
    hist = json_epochs(res)
    window = label_window(hist)
    labels = json.loads(Path(res["metrics"]).read_text())["summary"]["labels"]
    assert labels["epochs"] == window and labels["epoch"] == window[-1] == res["summary"]["labels"]["epoch"]
    table = pq.read_table(res["corrected_labels"])
    assert json.loads(table.schema.metadata[b"labels_epochs"]) == window
    state = torch.load(tmp_path / "win" / "checkpoints" / "epoch_0004" / "state.pt", weights_only=True)
    kept = state["labels"]["tables"]
    assert sorted(kept) == window
    soft = np.asarray(table.column("soft").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(soft, sum(kept[e].double() for e in window).numpy() / len(window), atol=1e-6)
    true = np.asarray(table.column("true_label").to_pylist())
    assert np.mean(soft.argmax(1) == true) == pytest.approx(labels["corrected_all"])
    assert any(line.startswith("exported labels: ") for line in lines)
