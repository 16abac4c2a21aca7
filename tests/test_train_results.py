"""What a run leaves a researcher: per-task tables with seed spread, bootstrap CIs and paired differences against
MedMIX; the positive class and its prevalence; per-sample predictions (run and `train predict`, same columns);
ROC/PR/calibration/confusion figures; the run record (command, resolved config, versions, timestamped log); a
run that resumes after an interruption with identical results; `train evaluate` naming the split it scored."""
import csv
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from train.metrics import binary_metrics
from train.predictions import COLUMNS
from train.report import fmt
from train.stats import binary_fast

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train_store import FAST, _write, make_store  # noqa: E402

TWO_SEEDS = [*FAST[2:], "--seeds", "2", "--bootstrap", "200", "--protocol",
             "none,test_multi@0.3,test_multi@0.5"]


def _run(tmp_path, out="run", extra=()):
    from train.__main__ import main
    if not (tmp_path / "s.zarr").exists():
        make_store(tmp_path / "s.zarr")
    return main(["--dataset", "toy", "--store", str(tmp_path / "s.zarr"), "--out", str(tmp_path / out),
                 *TWO_SEEDS, *extra])


def test_a_run_writes_per_task_results_with_cis_predictions_figures_and_its_record(tmp_path):
    assert _run(tmp_path) == 0
    out = tmp_path / "run"
    res = json.loads((out / "results.json").read_text())
    boot = res["bootstrap"]
    assert boot["n_boot"] == 200 and boot["n_test"] == res["split_sizes"]["test"]
    lo, hi = boot["methods"]["medmix"]["y"]["auroc"]["ci95"]
    assert lo <= boot["methods"]["medmix"]["y"]["auroc"]["value"] <= hi
    diff = boot["paired"]["meanavg"]["y"]["auroc"]
    assert diff["diff"] == pytest.approx(boot["methods"]["meanavg"]["y"]["auroc"]["value"]
                                         - boot["methods"]["medmix"]["y"]["auroc"]["value"])
    assert diff["ci95"][0] <= diff["diff"] <= diff["ci95"][1]
    task = res["methods"]["medmix"]["protocols"]["none"]["tasks"]["y"]
    assert len(task["auroc"]["values"]) == 2 and task["brier"]["std"] is not None and task["prevalence"] == 0.5
    md = (out / "results.md").read_text()
    assert "## Task y (binary)" in md and "Positive class: **y = 1**" in md and "Paired bootstrap" in md
    assert "Command: `python -m train --dataset toy" in md
    with open(out / res["predictions"]["medmix"]) as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == COLUMNS
    assert {r["seed"] for r in rows} == {"0", "1"} and {r["split"] for r in rows} == {"val", "test"}
    assert len(rows) == 2 * (res["split_sizes"]["val"] + res["split_sizes"]["test"])
    assert all(r["predicted"] == str(int(float(r["probability"]) >= float(r["threshold"]))) for r in rows)
    for png in ("curves_y.png", "confusion_y.png", "medmix_weights.png", "test_multi_auroc.png"):
        assert (out / png).stat().st_size > 1000
    # the missing-modality curve's points carry bootstrap CIs of their own, shown per task
    drop = boot["protocols"]["test_multi@0.5"]["medmix"]["y"]["auroc"]
    assert drop["ci95"][0] <= drop["value"] <= drop["ci95"][1]
    assert "## Missing-modality protocols, task y (AUROC; mean ± std over 2 seeds; [95% CI]" in md
    assert f"[{drop['ci95'][0]:.3f}, {drop['ci95'][1]:.3f}]" in md
    run = json.loads((out / "run.json").read_text())
    assert run["command"].startswith("python -m train --dataset toy") and run["resolved"]["seeds"] == [0, 1]
    assert run["resolved"]["recipe_resolved"]["max_epochs"] == 3 and "torch" in run["packages"]
    log = (out / "run.log").read_text().splitlines()
    assert log and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", ln) for ln in log)
    assert any("plan: 2 methods x 2 seeds = 4 fits" in ln for ln in log)
    assert not (out / "results.partial.json").exists() and not (out / "partial").exists()


def test_an_interrupted_run_resumes_and_gives_identical_results(tmp_path, monkeypatch, capsys):
    assert _run(tmp_path, "full") == 0
    import train.experiment as ex
    real, calls = ex.train_one, []

    def stop_at_third(*a, **k):
        calls.append(a[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(ex, "train_one", stop_at_third)
    capsys.readouterr()
    assert _run(tmp_path, "resumed") == 130
    err = capsys.readouterr().err
    assert "interrupted: 2 of 4 fits kept in" in err and "the same command resumes" in err
    ledger = json.loads((tmp_path / "resumed" / "results.partial.json").read_text())
    assert len(ledger["fits"]) == 2
    calls.clear()
    assert _run(tmp_path, "resumed") == 0
    assert calls == ["meanavg", "meanavg"]                          # medmix's two seeds were not trained again
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("full", "resumed"))
    for name in ("medmix", "meanavg"):
        pa, pb = a["methods"][name]["protocols"]["none"], b["methods"][name]["protocols"]["none"]
        assert pa["tasks"] == pb["tasks"] and pa["auroc"] == pb["auroc"]
    assert a["bootstrap"]["paired"] == b["bootstrap"]["paired"]
    assert not (tmp_path / "resumed" / "results.partial.json").exists()


def test_predict_writes_the_run_columns_and_evaluate_names_its_split(tmp_path, capsys):
    from train.__main__ import main
    assert _run(tmp_path) == 0
    ck = str(tmp_path / "run" / "checkpoints" / "medmix.pt")
    out = tmp_path / "p.csv"
    assert main(["predict", "--checkpoint", ck, "--store", str(tmp_path / "s.zarr"), "--out", str(out)]) == 0
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == COLUMNS and len(rows) == 80 and {r["seed"] for r in rows} == {"0"}
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", ck, "--dataset", "toy", "--store", str(tmp_path / "s.zarr")]) == 0
    cap = capsys.readouterr()
    assert "scored split 'test'" in cap.out and ": 20 samples" in cap.out and "TRAINING rows" not in cap.err
    assert main(["evaluate", "--checkpoint", ck, "--dataset", "toy", "--store", str(tmp_path / "s.zarr"),
                 "--split", "all"]) == 0
    assert "40 of the scored rows are the checkpoint's TRAINING rows" in capsys.readouterr().err


def test_a_modality_without_training_rows_is_left_out_and_methods_train(tmp_path, capsys):
    st = make_store(tmp_path / "s.zarr")
    valid = np.zeros(st.n, np.uint8)
    valid[45] = 1                                                    # one validation row has modality c
    _write(st, "c", "e0", "c1", np.random.default_rng(0).normal(size=(st.n, 3)).astype(np.float32), valid)
    assert _run(tmp_path, extra=["--keep-modalities", "c"]) == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert "c" not in res["layout"]
    assert any("c" in n and "no" in n and "training" in n for n in res["notes"])


def test_one_seed_shows_no_spread_and_fast_metrics_equal_scikit_learn():
    assert fmt({"auroc": {"mean": 0.7, "std": None}}, "auroc") == "0.7000"
    assert fmt({"auroc": {"mean": 0.7, "std": 0.01}}, "auroc") == "0.7000 ± 0.0100"
    rng = np.random.default_rng(0)
    for _ in range(50):
        y = rng.integers(0, 2, 40).astype(float)
        y[:2] = [0, 1]
        p = np.round(rng.random(40), 1)                              # ties
        for macro in (True, False):
            for pos in (0, 1):
                a, b = binary_fast(y, p, 0.4, macro, pos), binary_metrics(y, p, 0.4, macro, pos)
                assert a == pytest.approx(b, abs=1e-12)


def test_auprc_is_for_the_positive_class_with_its_prevalence():
    y = np.array([1, 1, 1, 1, 1, 1, 0, 0, 1, 1], float)            # 1 = alive (MMIST), 0 = died: the event
    p = np.array([.9, .8, .7, .95, .6, .85, .3, .65, .75, .5])      # P(alive)
    m = binary_metrics(y, p, 0.5, True, positive=0)
    assert m["prevalence"] == pytest.approx(0.2)
    assert m["auprc"] == pytest.approx(average_precision_score(y == 0, 1 - p))
    assert m["auprc"] < binary_metrics(y, p, 0.5, True, positive=1)["auprc"]
    from stores.spec import load_spec
    task = load_spec().dataset("mmist").tasks["vital_status_12"]
    assert task.positive_label == 0 and "died" in task.positive_name


def test_a_batch_without_any_known_label_is_skipped_not_a_crash(tmp_path):
    """OpenI: rows whose findings are all unknown; a batch of only such rows has a loss without a gradient."""
    from stores.store import OK, Store
    from train.__main__ import main
    n = 40
    y = (np.arange(n) % 2).astype(np.float32)[:, None]
    y[:6] = np.nan                                                   # six training rows without a label
    st = Store.create(tmp_path / "s.zarr", "toy", [f"s{i}" for i in range(n)], ["train"] * 20 + ["val"] * 10 +
                      ["test"] * 10, {"y": (y, {"type": "binary", "labels": ["y"]})}, chunk_rows=32)
    x = (np.random.default_rng(0).normal(size=(n, 3)) + np.nan_to_num(y)).astype(np.float32)
    _write(st, "a", "e0", "a1", x, np.full(n, OK, np.uint8))
    assert main(["--dataset", "toy", "--store", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "run"),
                 "--batch-size", "1", "--max-epochs", "1", "--warmup-steps", "1", "--methods", "medmix,meanavg",
                 "--seeds", "1", "--tune", "none", "--no-probes", "--bootstrap", "0"]) == 0


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_with_the_same_results(tmp_path):
    """A real kill (SIGKILL: no handler runs) after the first fits were kept: the same command finishes the rest,
    and its results and predictions equal an uninterrupted run's."""
    import os
    import signal
    import subprocess
    import time
    root = Path(__file__).resolve().parent.parent
    make_store(tmp_path / "s.zarr")
    args = ["--dataset", "toy", "--store", str(tmp_path / "s.zarr"), *FAST[2:], "--seeds", "4", "--max-epochs", "30",
            "--bootstrap", "100", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(root)}

    def train(out: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "train", *args, "--out", str(tmp_path / out)], cwd=root,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert train("full").wait(timeout=900) == 0
    proc, ledger = train("killed"), tmp_path / "killed" / "results.partial.json"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(ledger.read_text())["fits"]:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    kept = len(json.loads(ledger.read_text())["fits"])
    assert 1 <= kept < 8
    resumed = train("killed")
    assert resumed.wait(timeout=900) == 0, resumed.stderr.read()[-2000:]
    log = (tmp_path / "killed" / "run.log").read_text()
    assert f"= 8 fits; {kept} done already (results.partial.json): resuming" in log, log[-2000:]
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("full", "killed"))
    for name in ("medmix", "meanavg"):
        assert a["methods"][name]["protocols"]["none"]["tasks"] == b["methods"][name]["protocols"]["none"]["tasks"]
    assert a["bootstrap"] == b["bootstrap"]
    for f in ("medmix.csv", "meanavg.csv"):
        assert (tmp_path / "full" / "predictions" / f).read_text() == (tmp_path / "killed" / "predictions" / f).read_text()
    assert not ledger.exists()


def test_what_the_figures_leave_out_is_said():
    from train.plots import figures_note
    many = {"tasks": [{"name": "findings", "type": "multilabel", "labels": list("abcdefg")},
                      {"name": "grade", "type": "multiclass", "labels": ["G1", "G2"]}]}
    note = figures_note(many)
    assert "first 4 of 7 binary outputs (findings: a, findings: b, findings: c, findings: d)" in note
    assert "multiclass tasks (grade) have no curves" in note
    assert figures_note({"tasks": [{"name": "y", "type": "binary", "labels": ["y"]}]}) is None


def test_the_parquet_predictions_keep_unknown_labels_as_nulls(tmp_path):
    """A label-less row (PhysioNet's unknown LOS) and a multi-class output (no threshold) write '' to the CSV and
    a typed null to the Parquet file beside it."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    from train.predictions import write_table
    rows = [{"id": "a", "split": "test", "task": "t", "label": "t", "y_true": 1, "probability": 0.9,
             "threshold": 0.5, "predicted": 1, "seed": 0},
            {"id": "b", "split": "test", "task": "t", "label": "t", "y_true": "", "probability": 0.2,
             "threshold": "", "predicted": 0, "seed": ""}]
    write_table(rows, tmp_path / "m.csv")
    df = pd.read_parquet(tmp_path / "m.parquet")
    assert list(df.columns) == list(COLUMNS) and str(df["y_true"].dtype) == "Int64"
    assert df["y_true"].tolist()[0] == 1 and pd.isna(df["y_true"][1]) and pd.isna(df["threshold"][1])
    assert pd.isna(df["seed"][1]) and df["probability"].tolist() == [0.9, 0.2]
    with open(tmp_path / "m.csv") as fh:
        assert list(csv.DictReader(fh))[1]["y_true"] == ""
