"""results.json -> results.md: per task (never averaged silently) the test metrics as mean ± std over seeds with a
bootstrap 95% CI over test patients, the positive class and its prevalence (the AUPRC of chance), the paired
bootstrap difference of each method against MedMIX; missing-modality tables; PNG figures (``train/plots.py``)."""
from __future__ import annotations

import json
from pathlib import Path

from .metrics import REPORTED, positive_name
from .plots import (KINDS, confusion_plots, curve_plots, figures_note, missing_modality_plots,
                    missing_modality_png, protocol_ci, weights_plot)

NAMES = {"auroc": "AUROC", "auprc": "AUPRC", "macro_f1": "macro-F1", "accuracy": "accuracy", "brier": "Brier"}


def fmt(entry: dict, metric: str) -> str:
    """mean ± std over seeds; the mean alone for one seed (no spread to show)."""
    e = entry[metric]
    return f"{e['mean']:.4f}" if e.get("std") is None else f"{e['mean']:.4f} ± {e['std']:.4f}"


def spread(seeds: list) -> str:
    """How a table's "mean ± std" reads: over how many seeds (one seed has no spread)."""
    return f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else "one seed"


def _ci(ci) -> str:
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def task_rows(results: dict, task: str, protocol: str = "none", with_ci: bool = True) -> list[dict]:
    """Per method, one task's metrics: mean ± std over seeds, then the bootstrap 95% CI of the seed ensemble."""
    boot = results.get("bootstrap", {}).get("methods", {})
    rows = []
    for name, e in results["methods"].items():
        p = e["protocols"].get(protocol, {}).get("tasks", {}).get(task)
        if not p:
            continue
        b = boot.get(name, {}).get(task, {}) if with_ci else {}
        rows.append({"method": name, **{NAMES[m]: fmt(p, m) + _ci(b.get(m, {}).get("ci95"))
                                        for m in REPORTED if m in p}})
    return rows


def paired_rows(results: dict, task: str) -> list[dict]:
    """Method - MedMIX on the same bootstrap resamples of the test patients: difference and 95% CI."""
    paired = results.get("bootstrap", {}).get("paired", {})
    return [{"method": name, **{f"{NAMES[m]} diff": f"{d[m]['diff']:+.4f}{_ci(d[m]['ci95'])}" for m in REPORTED}}
            for name, per in paired.items() if (d := per.get(task))]


def headline_rows(results: dict, protocol: str = "none") -> list[dict]:
    """The console / demo table: per method and task, every metric (mean ± std over seeds); params, EffScore."""
    rows = []
    tasks = [t["name"] for t in results.get("tasks", [])] or sorted(
        {t for e in results["methods"].values() for t in e["protocols"].get(protocol, {}).get("tasks", {})})
    for name, e in results["methods"].items():
        for t in tasks:
            p = e["protocols"].get(protocol, {}).get("tasks", {}).get(t)
            if p:
                rows.append({"method": name, "task": t, **{NAMES[m]: fmt(p, m) for m in REPORTED if m in p},
                             "params": e.get("efficiency", {}).get("params", ""),
                             "EffScore": f"{e['eff_score']:.3f}" if "eff_score" in e else ""})
    return rows


PROTOCOLS_NOTE = ("AUROC; `test_multi@r`: each modality of a test patient removed with probability r, "
                  "independently; a patient may lose all, and is then scored from the prior; `test_drop_one@r`: "
                  "with probability r one of its available modalities, at random, is removed; `loss to ...`: AUROC "
                  "without drops minus AUROC at the harshest multi-random drop, smaller = more robust.")


def protocol_rows(results: dict, task: str, metric: str = "auroc") -> list[dict]:
    """Per method, one task's metric under no drop and under each missing-modality protocol run (mean ± std over
    seeds, then the 95% bootstrap CI of the seed-averaged probabilities), and how much it loses from no drop to the
    harshest test-time multi-random drop (the difference of the means: how fast the curve falls)."""
    names = list(results["protocols"])
    harshest = max((p for p in names if p.startswith("test_multi@")), key=lambda p: float(p.split("@")[1]),
                   default=None)
    rows = []
    for name, e in results["methods"].items():
        ps = {p: v["tasks"][task] for p, v in e["protocols"].items() if task in v.get("tasks", {})}
        row = {"method": name, **{p: fmt(ps[p], metric) + _ci(protocol_ci(results, p, name, task, metric).get("ci95"))
                                  for p in names if p in ps}}
        if harshest and "none" in names:
            row[f"loss to {harshest}"] = (f"{ps['none'][metric]['mean'] - ps[harshest][metric]['mean']:+.4f}"
                                          if "none" in ps and harshest in ps else "")
        rows.append(row)
    return rows


def protocol_lines(results: dict, drawn: set[str], heading: str = "##", figure_dir: str = "") -> list[str]:
    """Per task: the protocols table and its curve when one was drawn (``drawn``: file names; results.md and the
    demo report)."""
    tasks = [t["name"] for t in results.get("tasks", [])]
    how = spread(results["seeds"])
    if results.get("bootstrap", {}).get("protocols"):
        how += "; [95% CI]: bootstrap over the test samples of the seed-averaged probabilities"
    lines = []
    for task in tasks:
        lines += [f"{heading} Missing-modality protocols, task {task} (AUROC; {how})", "",
                  md_table(protocol_rows(results, task)), f"({PROTOCOLS_NOTE})", ""]
        for kind, _ in KINDS:
            png = missing_modality_png(results, kind, task)
            if png in drawn:
                lines += [f"![AUROC of {task} vs {kind.replace('_', ' ')} drop rate]({figure_dir}{png})", ""]
    return lines


def md_table(rows: list[dict]) -> str:
    if not rows:
        return "(none)\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_report(results: dict, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    curves = missing_modality_plots(results, out_dir)          # linked beside their protocol tables
    figures = [*curve_plots(results, out_dir), *confusion_plots(results, out_dir)]
    weights = weights_plot(results, out_dir)
    n_seeds = len(results["seeds"])
    lines = [f"# {results['dataset']}: results", "",
             f"Store `{results['store']}`; split sizes {results['split_sizes']}; {n_seeds} seed"
             f"{'s' if n_seeds != 1 else ''} {results['seeds']}; config hash `{results['config_hash'][:12]}`; "
             f"wall time {results.get('wall_seconds', '?')} s.", "",
             "Experts per modality: " + "; ".join(f"{m}: {', '.join(e)}" for m, e in results["layout"].items())
             + f". Teachers: {', '.join(results['teachers']) or 'none'}.", ""]
    run = out_dir / "run.json"
    if run.exists():
        info = json.loads(run.read_text())
        lines += [f"Command: `{info['command']}` ({info['version']}; resolved configuration and package versions in "
                  "[run.json](run.json), timestamped log in [run.log](run.log)).", ""]
    lines += _task_lines(results) + _overall_lines(results)
    lines += _selection_lines(results) + _diagnostic_lines(results) + _run_lines(results)
    if any(p != "none" for p in results["protocols"]):
        lines += protocol_lines(results, {p.name for p in curves})
    skipped = {t: v["skipped_labels"] for name, e in results["methods"].items() for p in e["protocols"].values()
               for s in p["per_seed"] for t, v in s["tasks"].items() if v.get("skipped_labels")}
    if skipped:
        lines += ["Labels skipped (not both classes in the test split): "
                  + "; ".join(f"{t}: {', '.join(v)}" for t, v in skipped.items()), ""]
    if results.get("predictions"):
        lines += ["Per-sample predictions (validation and test rows, every seed): "
                  + ", ".join(f"[{k}]({v})" for k, v in results["predictions"].items()), ""]
    note = figures_note(results)
    if note:
        lines += [note, ""]
    for p in figures + ([weights] if weights else []):
        lines += [f"![{p.stem}]({p.name})", ""]
    path = out_dir / "results.md"
    path.write_text("\n".join(lines))
    return path


def _task_lines(results: dict) -> list[str]:
    boot = results.get("bootstrap")
    how = spread(results["seeds"])
    if boot:
        how += (f"; [95% CI]: bootstrap over the {boot['n_test']} test samples ({boot['n_boot']} resamples) of the "
                "seed-averaged probabilities")
    lines = []
    for t in results.get("tasks", []):
        prev = next((e["protocols"]["none"]["tasks"][t["name"]].get("prevalence") for e in results["methods"].values()
                     if t["name"] in e["protocols"].get("none", {}).get("tasks", {})), None)
        prev_text = f"; test prevalence {prev:.3f} (the AUPRC of chance)" if prev is not None else ""
        lines += [f"## Task {t['name']} ({t['type']}): test set, no modality removed", "",
                  f"Positive class: **{positive_name(t)}**{prev_text}. {how}; thresholds tuned on validation; "
                  "Brier: lower is better.", "", md_table(task_rows(results, t["name"]))]
        pr = paired_rows(results, t["name"])
        if pr:
            lines += [f"Paired bootstrap against {boot.get('reference', 'medmix')} (method - reference on the same "
                      "resampled test samples; [95% CI]; an interval excluding 0 is a difference beyond resampling "
                      "noise):", "", md_table(pr)]
    return lines


def _overall_lines(results: dict) -> list[str]:
    """The mean over tasks, labelled as such, with costs and EffScore (Perf = mean of AUROC, AUPRC, mF1, acc)."""
    rows = []
    for name, e in results["methods"].items():
        p = e["protocols"].get("none")
        if p:
            rows.append({"method": name, "Perf (mean over tasks)": fmt(p, "perf"),
                         "params": e.get("efficiency", {}).get("params", ""),
                         "FLOPs/sample": f"{e['efficiency']['flops_per_sample']:.3g}" if "efficiency" in e else "",
                         "EffScore": f"{e['eff_score']:.3f}" if "eff_score" in e else ""})
    n = len(results.get("tasks", []))
    title = f"## Mean over the {n} tasks, and costs" if n > 1 else "## Costs"
    return [title, "", md_table(rows)] if rows else []


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
