"""bench/gpu_check: the GPU path end to end, in one short run (< 5 min on one GPU), with CPU figures beside it.

    python bench/gpu_check.py [--samples 512] [--cpu-fraction 0.25]

1. extract (offline profile, real data under the data root) on cuda, autocast at each encoder's own precision
   (Encoder.autocast: bf16/fp16 where the encoder chose it): OpenI report texts (MiniLM), OpenI frontal CXRs
   (EfficientNet-Lite0) through extract.pipeline.extract_dataset; one CT volume (the 3-D ASTRA/Merlin I3ResNet and
   the 2.5D EfficientNet) and the WSI sample slide (EfficientNet tiles) through registry.build_encoder;
2. MedMIX, 1 seed, on cuda, over the store step 1 wrote (data moved once by Data.to);
3. the retrieval index (rag.index.make_faiss: faiss-gpu when installed) over the stored text vectors;
4. paper-profile models at their REAL size with random weights (``--paper``; configs: tests/paper_configs.py), saved
   the way their hub repos hold them and loaded through the encoders' own paths on cuda, in the precision each loads
   in: items/s and peak GPU memory per encoder (random weights: timing and memory only, never an embedding to use).
Each figure of 1-3 is printed beside the same work on CPU (a fraction of the items, scaled to items/s). Without a
GPU the script says so and exits 0: it checks the GPU path, there is nothing to compare on CPU alone.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import ROOT, timed

from extract.pipeline import extract_dataset
from plugins.registry import build_encoder
from stores.paths import data_root
from stores.spec import load_spec

sys.path.insert(0, str(ROOT / "tests"))         # paper_configs: the models' public configurations


def line(name: str, n_gpu: int, t_gpu: float, n_cpu: int, t_cpu: float, unit: str = "items/s") -> None:
    g, c = n_gpu / t_gpu, n_cpu / t_cpu
    print(f"{name:<44} cuda {g:>10,.1f} {unit}   cpu {c:>10,.1f} {unit}   speed-up {g / c:6.1f}x")


def extract_rate(store: Path, modality: str, expert: str, limit: int, device: str) -> float:
    _, t = timed(extract_dataset, "openi", profile="offline", store=str(store), modalities=[modality],
                 experts=[expert], rag=False, progress=False, device=device, limit=limit)
    return t


def encoder_rate(key: str, items: list, device: str) -> float:
    enc = build_encoder(key, device=device).load()
    enc.encode(items[:1])                                   # warm-up: weights on the device, kernels chosen
    if device == "cuda":
        torch.cuda.synchronize()
    _, t = timed(enc.encode, items)
    print(f"  {key} on {device}: precision {str(enc.precision).replace('torch.', '')}")
    return t


def train_rate(store: Path, device: str) -> tuple[float, int]:
    from train.data import Data
    from train.trainer import Recipe, train_one
    data, _ = Data.from_store(str(store))
    recipe = Recipe(lr=1e-3, warmup_epochs=2, max_epochs=20, patience=100, batch_size=64)
    (_, info), t = timed(train_one, "medmix", data, recipe, 0, device=device)
    return t, info["epochs_run"]


def index_rate(vectors: np.ndarray, queries: int = 2000) -> tuple[float, float, bool]:
    import faiss

    from rag.index import make_faiss, normalise
    x = normalise(np.tile(vectors, (max(1, 50_000 // len(vectors)), 1)))
    q = x[:queries]
    gpu = make_faiss(x, "flat")                              # on the GPU when faiss-gpu is installed
    cpu = faiss.IndexFlatIP(x.shape[1])
    cpu.add(x)
    _, t_gpu = timed(gpu.search, q, 10)
    _, t_cpu = timed(cpu.search, q, 10)
    return queries / t_gpu, queries / t_cpu, faiss.get_num_gpus() > 0


PAPER = "gatortron_base,qwen2_0_5b,chronos_small,dinov3_vitl,radfm"


def random_paper_model(key: str, folder: Path):
    """The model at its real size with random weights, saved as its hub repo holds it; its EncoderOptions."""
    from paper_configs import CHRONOS_T5_SMALL, GATORTRON_BASE, QWEN2_0_5B
    from plugins.registry import EncoderOptions, build_encoder
    folder.mkdir(parents=True, exist_ok=True)
    if key == "dinov3_vitl":
        import timm
        from safetensors.torch import save_file
        model = timm.create_model("vit_large_patch16_dinov3", num_classes=0)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
        return EncoderOptions(source=str(folder / "model.safetensors"))
    if key == "radfm":
        from plugins.encoders.radfm import RadFMVision
        torch.save({f"embedding_layer.{k}": v for k, v in RadFMVision().state_dict().items()}, folder / "model.bin")
        return EncoderOptions(source=str(folder / "model.bin"))
    from transformers import AutoConfig, AutoModel, T5ForConditionalGeneration
    cfg = {"gatortron_base": GATORTRON_BASE, "qwen2_0_5b": QWEN2_0_5B, "chronos_small": CHRONOS_T5_SMALL}[key]
    config = AutoConfig.for_model(**{k: v for k, v in cfg.items() if k not in ("architectures", "chronos_config")})
    if key == "chronos_small":
        config.chronos_config, config.architectures = cfg["chronos_config"], cfg["architectures"]
        T5ForConditionalGeneration(config).save_pretrained(folder)
    else:                  # a real WordPiece tokenizer (MiniLM's, ids < either vocabulary): timing only
        AutoModel.from_config(config).save_pretrained(folder)
        tok = Path(build_encoder("minilm").load().resolved.location)
        for f in tok.glob("*"):
            if f.name.startswith(("vocab", "tokenizer", "special_tokens")):
                shutil.copy(f, folder / f.name)
    return EncoderOptions(source=str(folder))


def paper_items(key: str, root: Path) -> list:
    from plugins.registry import get
    modality = get(key).card.modality
    if modality == "text":
        return [" ".join(["the lungs are clear without focal consolidation effusion or pneumothorax"] * 40)] * 32
    if modality == "series":
        x = np.random.default_rng(0).normal(size=(48, 36)).astype(np.float32)
        x[np.random.default_rng(1).random(x.shape) < 0.8] = np.nan          # sparse, as hourly EHR is
        return [x] * 16
    if modality == "image":
        return [np.random.default_rng(0).random((1, 3, 224, 224)).astype(np.float32)] * 64
    from plugins.readers.ct import read_volume_ras
    return [read_volume_ras(root / "ct" / "example_ct_sm.nii.gz")] * 2


def paper_rates(keys: list[str], root: Path, tmp: Path) -> None:
    """items/s and peak GPU memory of each paper model at real size (random weights) on cuda."""
    from plugins.registry import build_encoder
    for key in keys:
        enc = build_encoder(key, random_paper_model(key, tmp / key), device="cuda").load()
        items = paper_items(key, root)
        enc.encode(items[:1])
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        _, t = timed(enc.encode, items)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"paper {key:<16} real size, random weights: {len(items) / t:>9,.1f} items/s   peak {peak:5.2f} GiB"
              f"   {'weights' if enc.weights_in_precision else 'autocast'} {str(enc.precision).replace('torch.', '')}")
        del enc
        torch.cuda.empty_cache()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=512, help="OpenI studies extracted on the GPU (texts + CXRs)")
    ap.add_argument("--cpu-fraction", type=float, default=0.25, help="CPU runs use this share of the items")
    ap.add_argument("--paper", default=PAPER, help="paper models at real size, random weights ('' = none)")
    ap.add_argument("--only-paper", action="store_true", help="skip steps 1-3")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no GPU visible to torch (torch.cuda.is_available() is False): nothing to check; exit 0")
        return 0
    print(f"gpu_check on {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    root = data_root(load_spec())
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    t0 = time.perf_counter()
    small = lambda n: max(4, int(n * args.cpu_fraction))  # noqa: E731

    if args.paper:
        paper_rates([k for k in args.paper.split(",") if k], root, tmp)
    if args.only_paper:
        return 0
    n = args.samples
    for modality, expert in (("note", "minilm"), ("frontal", "effnet")):
        tg = extract_rate(tmp / "gpu.zarr", modality, expert, n, "cuda")          # one store: both modalities
        tc = extract_rate(tmp / "cpu.zarr", modality, expert, small(n), "cpu")
        line(f"extract openi {modality} ({expert})", n, tg, small(n), tc)

    from plugins.readers.ct import ct_slices_25d, read_volume, read_volume_ras
    ct = root / "ct" / "example_ct_sm.nii.gz"
    vol = read_volume_ras(ct)
    line("CT volume, 3-D astra_ct", 1, encoder_rate("astra_ct", [vol, vol], "cuda") / 2,
         1, encoder_rate("astra_ct", [vol], "cpu"), "volumes/s")
    stack = ct_slices_25d(read_volume(ct))
    line("CT volume, 2.5D efficientnet_lite0", 4, encoder_rate("efficientnet_lite0", [stack] * 4, "cuda"),
         1, encoder_rate("efficientnet_lite0", [stack], "cpu"), "volumes/s")

    from plugins.readers.wsi import slide_tiles
    tiles = slide_tiles(root / "wsi" / "CMU-1-Small-Region.svs", tissue_threshold=0.0)
    line(f"WSI tiles ({len(tiles)}), efficientnet_lite0", len(tiles), encoder_rate("efficientnet_lite0", [tiles], "cuda"),
         len(tiles), encoder_rate("efficientnet_lite0", [tiles], "cpu"), "tiles/s")

    tg, eg = train_rate(tmp / "gpu.zarr", "cuda")
    tc, ec = train_rate(tmp / "gpu.zarr", "cpu")
    line("train MedMIX 1 seed (note + frontal store)", eg, tg, ec, tc, "epochs/s")

    from stores.loader import read_experts
    vec = read_experts(str(tmp / "gpu.zarr"), {"note": ["minilm"]}, teachers=False).vectors["note"]["minilm"]
    qg, qc, on_gpu = index_rate(vec)
    print(f"{'faiss flat search (50k x ' + str(vec.shape[1]) + ')':<44} {'gpu' if on_gpu else 'cpu (faiss-gpu absent)'}"
          f" {qg:>10,.1f} q/s   cpu {qc:>10,.1f} q/s   speed-up {qg / qc:6.1f}x")
    print(f"gpu_check done in {time.perf_counter() - t0:.0f} s (store {tmp})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
