"""The run's figures (matplotlib PNG), from results.json and the per-sample predictions files: ROC and
precision-recall curves per task (methods overlaid, chance as a line), a reliability diagram per task, the confusion
matrix of each method at its validation-tuned threshold, missing-modality curves per task (the seed-averaged
probabilities' AUROC with its 95% bootstrap CI band, chance at 0.5) and MedMIX's router/fusion weights. Curves use each method's seed-averaged test
probabilities, the same the bootstrap resamples."""
from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import confusion_matrix, precision_recall_curve, roc_curve  # noqa: E402

log = logging.getLogger("medmix.train")
KINDS = (("test_multi", "test-time multi-random drop"), ("test_drop_one", "test-time one-modality drop"),
         ("train_multi", "train-time multi-random drop"), ("train_drop_one", "train-time one-modality drop"))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def test_predictions(results: dict, out_dir: Path) -> dict:
    """{method: DataFrame of test rows with the probability averaged over seeds} from the predictions files."""
    import pandas as pd
    out = {}
    for name, rel in results.get("predictions", {}).items():
        path = Path(out_dir) / rel
        if not path.exists():
            continue
        df = pd.read_csv(path, dtype={"id": str})
        df = df[df["split"] == "test"].dropna(subset=["y_true"])
        out[name] = (df.groupby(["task", "label", "id"], sort=False)
                     .agg(y_true=("y_true", "first"), probability=("probability", "mean"),
                          threshold=("threshold", "mean")).reset_index())
    return out


def _binary_outputs(results: dict) -> list[tuple[str, str, int]]:
    """(task, label, positive value) of every binary output: binary tasks, and each label of a multi-label task."""
    out = []
    for t in results.get("tasks", []):
        if t["type"] == "binary":
            out.append((t["name"], t["labels"][0], int(t.get("positive_label", 1))))
        elif t["type"] == "multilabel":
            out += [(t["name"], lab, 1) for lab in t["labels"]]
    return out


MAX_OUTPUTS = 4        # binary outputs drawn as curves and confusion matrices (a multi-label task has one per label)


def figures_note(results: dict, max_outputs: int = MAX_OUTPUTS) -> str | None:
    """What the curve and confusion figures leave out, said in results.md (never silently)."""
    outs = _binary_outputs(results)
    parts = []
    if len(outs) > max_outputs:
        drawn = ", ".join(f"{t}: {lab}" if lab != t else t for t, lab, _ in outs[:max_outputs])
        parts.append(f"ROC/PR/reliability curves and confusion matrices are drawn for the first {max_outputs} of "
                     f"{len(outs)} binary outputs ({drawn}); every output's metrics are in the tables and "
                     "predictions files")
    multi = [t["name"] for t in results.get("tasks", []) if t["type"] == "multiclass"]
    if multi:
        parts.append(f"multiclass tasks ({', '.join(multi)}) have no curves: their per-class metrics are in the tables")
    return "; ".join(parts) + "." if parts else None


def curve_plots(results: dict, out_dir: Path, max_outputs: int = MAX_OUTPUTS) -> list[Path]:
    """ROC, PR (for the positive class, prevalence as the chance line) and reliability per binary output."""
    preds = test_predictions(results, out_dir)
    paths = []
    for task, label, pos in _binary_outputs(results)[:max_outputs]:
        fig, axes = plt.subplots(1, 3, figsize=(13, 4))
        prevalence = None
        for name, df in preds.items():
            d = df[(df["task"] == task) & (df["label"] == label)]
            y, p = d["y_true"].to_numpy(int), d["probability"].to_numpy(float)
            if len(np.unique(y)) < 2:
                continue
            yp, pp = (y == pos).astype(int), (p if pos == 1 else 1 - p)
            prevalence = yp.mean()
            fpr, tpr, _ = roc_curve(y, p)
            axes[0].plot(fpr, tpr, label=name)
            prec, rec, _ = precision_recall_curve(yp, pp)
            axes[1].plot(rec, prec, label=name)
            frac, mean_p = calibration_curve(y, p, n_bins=10, strategy="quantile")
            axes[2].plot(mean_p, frac, marker="o", ms=3, label=name)
        if prevalence is None:
            plt.close(fig)
            continue
        what = task if label == task else f"{task}: {label}"
        axes[0].plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
        axes[0].set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC ({what})")
        axes[1].axhline(prevalence, color="k", ls="--", lw=0.8, label=f"chance (prevalence {prevalence:.3f})")
        axes[1].set(xlabel="recall", ylabel="precision",
                    title=f"precision-recall, positive: {_positive(results, task)}")
        axes[2].plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
        axes[2].set(xlabel="mean predicted P(label = 1)", ylabel="observed fraction", title=f"reliability ({what})")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        paths.append(_save(fig, Path(out_dir) / f"curves_{_stem(task, label)}.png"))
    return paths


def confusion_plots(results: dict, out_dir: Path, max_outputs: int = MAX_OUTPUTS) -> list[Path]:
    """Per binary output, each method's confusion matrix at its (seed-mean) validation-tuned threshold."""
    preds = test_predictions(results, out_dir)
    paths = []
    for task, label, _ in _binary_outputs(results)[:max_outputs]:
        names = list(preds)
        if not names:
            break
        fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 2.8), squeeze=False)
        for ax, name in zip(axes[0], names):
            d = preds[name][(preds[name]["task"] == task) & (preds[name]["label"] == label)]
            cm = confusion_matrix(d["y_true"].to_numpy(int), (d["probability"] >= d["threshold"]).to_numpy(int),
                                  labels=[0, 1])
            ax.imshow(cm, cmap="Blues")
            for (i, j), v in np.ndenumerate(cm):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=9)
            ax.set(xticks=[0, 1], yticks=[0, 1], xlabel="predicted", ylabel="true", title=name)
            ax.title.set_fontsize(8)
        what = task if label == task else f"{task}: {label}"
        fig.suptitle(f"{what} (test, threshold tuned on validation)", fontsize=9)
        paths.append(_save(fig, Path(out_dir) / f"confusion_{_stem(task, label)}.png"))
    return paths


def missing_modality_png(results: dict, kind: str, task: str, metric: str = "auroc") -> str:
    """The curve's file name: ``<kind>_<metric>.png``, with the task's name when the run has several tasks."""
    several = len(results.get("tasks", [])) > 1
    return f"{kind}_{metric}_{_safe(task)}.png" if several else f"{kind}_{metric}.png"


def protocol_ci(results: dict, protocol: str, name: str, task: str, metric: str) -> dict:
    """The bootstrap entry ({"value", "ci95"}) of a method's metric under a protocol ("none": the main bootstrap);
    {} when the run kept none."""
    boot = results.get("bootstrap", {})
    b = boot.get("methods", {}) if protocol == "none" else boot.get("protocols", {}).get(protocol, {})
    return b.get(name, {}).get(task, {}).get(metric) or {}


def _curve_points(results: dict, e: dict, name: str, kind: str, task: str, metric: str, with_ci: bool) -> list:
    """(drop rate, value, low, high) of one method: the seed-averaged probabilities' metric and its 95% bootstrap
    CI, or (without bootstrap) the mean over seeds ± 1 std."""
    pts = []
    for p, v in e["protocols"].items():
        if task not in v.get("tasks", {}) or not (p == "none" or p.startswith(kind + "@")):
            continue
        rate = 0.0 if p == "none" else float(p.split("@")[1])
        if with_ci:
            b = protocol_ci(results, p, name, task, metric)
            value = b.get("value", v["tasks"][task][metric]["mean"])
            ci = b.get("ci95") or (value, value)             # no interval (e.g. a label too rare): no band
            pts.append((rate, value, *ci))
        else:
            m = v["tasks"][task][metric]
            pts.append((rate, m["mean"], m["mean"] - (m["std"] or 0.0), m["mean"] + (m["std"] or 0.0)))
    return sorted(pts)


def missing_modality_plots(results: dict, out_dir: Path, metric: str = "auroc") -> list[Path]:
    """Per task and protocol kind: metric vs drop rate per method, a 95% bootstrap CI band over the test patients
    (± 1 std over seeds when the run kept no bootstrap), chance (0.5 for AUROC) as a line."""
    with_ci = bool(results.get("bootstrap", {}).get("protocols"))
    band = "band: 95% bootstrap CI over test patients" if with_ci else "band: ± 1 std over seeds"
    paths = []
    for task in [t["name"] for t in results.get("tasks", [])]:
        for kind, title in KINDS:
            pts = {name: _curve_points(results, e, name, kind, task, metric, with_ci)
                   for name, e in results["methods"].items()}
            pts = {k: v for k, v in pts.items() if len(v) > 1}
            if not pts:
                continue
            fig, ax = plt.subplots(figsize=(5.5, 3.6))
            for name, rows in pts.items():
                x, y, lo, hi = map(np.asarray, zip(*rows))
                line, = ax.plot(x, y, marker="o", label=name)
                ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
            if metric == "auroc":
                ax.axhline(0.5, color="k", ls="--", lw=0.8, label="chance")
            ax.set(xlabel="drop rate", ylabel=metric.upper(),
                   title=f"{results['dataset']}, {task}: {title}\n({band})")
            ax.title.set_fontsize(9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            paths.append(_save(fig, Path(out_dir) / missing_modality_png(results, kind, task, metric)))
    return paths


def weights_plot(results: dict, out_dir: Path) -> Path | None:
    w = results["methods"].get("medmix", {}).get("weights")
    if not w:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    labels = [f"{m}/{e}" for m, d in w["router"].items() for e in d]
    axes[0].barh(labels, [v for d in w["router"].values() for v in d.values()])
    axes[0].set_title("mean router weight (within modality)")
    axes[1].barh(list(w["fusion"]), list(w["fusion"].values()))
    axes[1].set_title("mean fusion weight (across modalities)")
    fig.suptitle(f"{results['dataset']}: MedMIX weights on the test set")
    return _save(fig, Path(out_dir) / "medmix_weights.png")


def _positive(results: dict, task: str) -> str:
    from .metrics import positive_name
    t = next((t for t in results.get("tasks", []) if t["name"] == task), None)
    return positive_name(t) if t else task


def _stem(task: str, label: str) -> str:
    return _safe(task) if label == task else f"{_safe(task)}_{_safe(label)}"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
