"""results.json -> results.md (tables like the paper's) + PNG plots (metric vs drop rate; router/fusion weights)."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .metrics import METRICS  # noqa: E402


def fmt(entry: dict, metric: str) -> str:
    return f"{entry[metric]['mean']:.4f} ± {entry[metric]['std']:.4f}"


def headline_rows(results: dict, protocol: str = "none") -> list[dict]:
    rows = []
    for name, e in results["methods"].items():
        if protocol in e["protocols"]:
            p = e["protocols"][protocol]
            rows.append({"method": name, **{m: fmt(p, m) for m in METRICS},
                         "params": e.get("efficiency", {}).get("params", ""),
                         "EffScore": f"{e['eff_score']:.3f}" if "eff_score" in e else ""})
    return rows


PROTOCOLS_NOTE = ("AUROC; `test_multi@r`: each modality of a test patient removed with probability r, "
                  "independently; a patient may lose all, and is then scored from the prior; `test_drop_one@r`: "
                  "with probability r one of its available modalities, at random, is removed; `loss to ...`: AUROC "
                  "without drops minus AUROC at the harshest multi-random drop, smaller = more robust.")


def protocol_rows(results: dict, metric: str = "auroc") -> list[dict]:
    """Per method, the metric under no drop and under each missing-modality protocol run (mean ± std), and how much
    it loses from no drop to the harshest test-time multi-random drop (the difference of the means: how fast the
    curve falls, the robustness figure)."""
    names = list(results["protocols"])
    harshest = max((p for p in names if p.startswith("test_multi@")), key=lambda p: float(p.split("@")[1]),
                   default=None)
    rows = []
    for name, e in results["methods"].items():
        row = {"method": name, **{p: fmt(e["protocols"][p], metric) for p in names if p in e["protocols"]}}
        if harshest and "none" in names:
            ps = e["protocols"]
            row[f"loss to {harshest}"] = (f"{ps['none'][metric]['mean'] - ps[harshest][metric]['mean']:+.4f}"
                                          if "none" in ps and harshest in ps else "")
        rows.append(row)
    return rows


def md_table(rows: list[dict]) -> str:
    if not rows:
        return "(none)\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_curves(results: dict, out_dir: Path, metric: str = "auroc") -> list[Path]:
    paths = []
    for kind, title in (("test_multi", "test-time multi-random drop"), ("test_drop_one", "test-time one-modality drop"),
                        ("train_multi", "train-time multi-random drop"), ("train_drop_one", "train-time one-modality drop")):
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        drew = False
        for name, e in results["methods"].items():
            pts = sorted((float(p.split("@")[1]), v[metric]["mean"], v[metric]["std"])
                         for p, v in e["protocols"].items() if p.startswith(kind + "@"))
            if not pts:
                continue
            base = e["protocols"].get("none")
            if base:
                pts = [(0.0, base[metric]["mean"], base[metric]["std"])] + pts
            x, y, s = zip(*pts)
            ax.errorbar(x, y, yerr=s, marker="o", capsize=2, label=name)
            drew = True
        if drew:
            ax.set_xlabel("drop rate")
            ax.set_ylabel(metric.upper())
            ax.set_title(f"{results['dataset']}: {title}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            p = out_dir / f"{kind}_{metric}.png"
            fig.savefig(p, dpi=120)
            paths.append(p)
        plt.close(fig)
    return paths


def plot_weights(results: dict, out_dir: Path) -> Path | None:
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
    fig.tight_layout()
    p = out_dir / "medmix_weights.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


def write_report(results: dict, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    curves = plot_curves(results, out_dir)
    weights = plot_weights(results, out_dir)
    lines = [f"# {results['dataset']}: results", "",
             f"Store `{results['store']}`; split sizes {results['split_sizes']}; seeds {results['seeds']}; "
             f"config hash `{results['config_hash'][:12]}`; wall time {results.get('wall_seconds', '?')} s.", "",
             "Experts per modality: " + "; ".join(f"{m}: {', '.join(e)}" for m, e in results["layout"].items())
             + f". Teachers: {', '.join(results['teachers']) or 'none'}.", "",
             "## Test set, no modality removed (mean ± std over seeds; thresholds tuned on validation)", "",
             md_table(headline_rows(results))]
    lines += _selection_lines(results) + _diagnostic_lines(results) + _run_lines(results)
    others = [p for p in results["protocols"] if p != "none"]
    if others:
        lines += ["## Missing-modality protocols (AUROC)", "", md_table(protocol_rows(results)),
                  f"({PROTOCOLS_NOTE})", ""]
    skipped = {t: v["skipped_labels"] for name, e in results["methods"].items() for p in e["protocols"].values()
               for s in p["per_seed"] for t, v in s["tasks"].items() if v.get("skipped_labels")}
    if skipped:
        lines += ["Labels skipped (not both classes in the test split): "
                  + "; ".join(f"{t}: {', '.join(v)}" for t, v in skipped.items()), ""]
    for p in curves + ([weights] if weights else []):
        lines += [f"![{p.stem}]({p.name})", ""]
    path = out_dir / "results.md"
    path.write_text("\n".join(lines))
    return path


def _selection_lines(results: dict) -> list[str]:
    rows = [{"group": k, "config": v["config_hash"][:12], "model": v.get("model"), "chosen": v.get("chosen", "latest"),
             "groups in store": v.get("versions_in_store", "")} for k, v in results["store_config_hashes"].items()]
    per_method = {k: v.get("normalisation") for k, v in results.get("methods", {}).items() if v.get("normalisation")}
    if len(set(per_method.values())) > 1:           # the validation grid chose it per method
        normalised = "per method, on validation (" + ", ".join(f"{k}: {v}" for k, v in per_method.items()) + ")"
    else:
        normalised = "yes (train-split mean/std per expert)" if set(per_method.values()) == {"standard"} or (
            not per_method and results.get("normalisation")) else "no"
    lines = [f"Recipe: **{results.get('recipe_name', 'custom')}**; inputs normalised: {normalised}.", "",
             "## Expert groups used", "", md_table(rows)]
    if results.get("notes"):
        lines += ["## Warnings and exclusions", ""] + [f"- {n}" for n in results["notes"]] + [""]
    return lines


def _diagnostic_lines(results: dict) -> list[str]:
    from .diagnostics import diagnostics_rows
    diag = results.get("diagnostics")
    if not diag:
        return []
    return ["## Diagnostics (inputs as trained on; probe = logistic regression on that input alone, fit on train, "
            "C on validation, AUROC on test rows that have it)", "", md_table(diagnostics_rows(diag))]


def _run_lines(results: dict) -> list[str]:
    rows = []
    for name, e in results["methods"].items():
        p = e["protocols"].get("none")
        if not p:
            continue
        seeds = p["per_seed"]
        degen = [f"seed {s['seed']}: {', '.join(f'{t}: {w}' for t, w in s['degenerate'].items())}"
                 for s in seeds if s.get("degenerate")]
        rows.append({"method": name, "best / total epochs per seed": ", ".join(
            f"{s['best_epoch']}/{s['epochs_run']}" for s in seeds),
            "tuned (validation)": ", ".join(f"{k}={v}" for k, v in e.get("tuning", {}).get("chosen", {}).items()),
            "degenerate predictions": "; ".join(degen) or "none"})
    tv = results.get("tune_validation")
    how = [f"Validation search scored on {tv['scored_on']} ({tv['why']}).", ""] if tv else []
    return ["## Training runs (no modality removed)", "", *how, md_table(rows)] if rows else []


def load_results(out_dir: Path) -> dict:
    return json.loads((Path(out_dir) / "results.json").read_text())
