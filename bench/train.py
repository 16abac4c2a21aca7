"""bench/train: one MedMIX epoch with the project's loader (experts read once into tensors, batches = index slices)
vs a naive per-sample torch Dataset + DataLoader reading the same Zarr rows. Synthetic store of the real shapes:
4 modalities x 3 experts, d = 768, float16 on disk (random embeddings: a speed benchmark, never a quality claim).

    python bench/train.py [--n 100000] [--naive-samples 2000]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
import zarr
from _common import report, timed

from stores.store import OK, Store
from train.data import Data
from train.losses import task_loss
from train.trainer import Recipe, build_model, seed_everything

MODS, EXPERTS, D = ["cxr", "note", "ehr", "ct"], ["general", "biomedical", "rag"], 768


def make_store(path: str, n: int) -> None:
    rng = np.random.default_rng(0)
    split = np.where(rng.random(n) < 0.8, "train", np.where(rng.random(n) < 0.5, "val", "test"))
    y = (rng.random((n, 1)) < 0.3).astype(np.float32)
    st = Store.create(path, "bench", [f"s{i}" for i in range(n)], list(split), {"y": (y, {"type": "binary", "labels": ["y"]})},
                      chunk_rows=4096)
    for m in MODS:
        for e in EXPERTS:
            g = st.require_expert_group(m, e, f"{m}{e}".ljust(64, "0"), D, {"model": e}, dtype="float16")
            for u in g.units():
                k = u.stop - u.start
                valid = np.where(rng.random(k) < 0.85, OK, 0).astype(np.uint8)
                g.write_unit(u, rng.normal(size=(k, D)).astype(np.float16), valid, [""] * k)


class NaiveDataset(torch.utils.data.Dataset):
    """What a first attempt looks like: one Zarr read per sample, per expert."""

    def __init__(self, path, rows):
        self.root = zarr.open_group(path, mode="r")
        self.rows = rows
        self.groups = {(m, e): self.root[f"embeddings/{m}/{e}/" + self.root[f"embeddings/{m}/{e}"].attrs["latest"]]
                       for m in MODS for e in EXPERTS}
        self.y = self.root["labels/y"]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        r = int(self.rows[i])
        xs = {k: torch.from_numpy(g["vectors"][r].astype(np.float32)) for k, g in self.groups.items()}
        ms = {k: torch.tensor(bool(g["valid"][r] == OK)) for k, g in self.groups.items()}
        return xs, ms, torch.from_numpy(self.y[r])


def step(model, opt, xs, masks, y, tasks):
    out = model(xs, masks)
    loss = task_loss(out.logits, y, tasks)
    opt.zero_grad()
    loss.backward()
    opt.step()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--naive-samples", type=int, default=2048)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    path = f"{tmp}/bench.zarr"
    _, t_make = timed(make_store, path, args.n)
    print(f"synthetic store: {args.n:,} samples x {len(MODS)} modalities x {len(EXPERTS)} experts (d={D}) in {t_make:.0f}s")
    seed_everything(0)
    ((data, _), t_load) = timed(Data.from_store, path)
    model = build_model("medmix", data, Recipe())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    train = data.rows("train")
    bs = 256
    t0 = time.perf_counter()
    for b in range(0, len(train), bs):
        idx = train[b:b + bs]
        xs, masks = data.batch(idx)
        step(model, opt, xs, masks, data.y[idx], data.tasks)
    t_epoch = time.perf_counter() - t0
    ours = len(train) / (t_epoch + t_load)
    print(f"project loader: load {t_load:.1f}s + epoch {t_epoch:.1f}s over {len(train):,} samples")
    rows = train[: args.naive_samples].numpy()
    ds = NaiveDataset(path, rows)
    dl = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True, num_workers=0)
    t0 = time.perf_counter()
    for xs_d, ms_d, y in dl:
        xs = {m: [xs_d[(m, e)] for e in EXPERTS] for m in MODS}
        masks = {m: torch.stack([ms_d[(m, e)] for e in EXPERTS], 1) for m in MODS}
        step(model, opt, xs, masks, y, data.tasks)
    t_naive = time.perf_counter() - t0
    naive = len(rows) / t_naive
    print(f"naive Dataset: {len(rows):,} samples in {t_naive:.1f}s")
    report("train epoch samples/s (incl. the one-time load)", ours, naive, "samples/s", ">= 20x")


if __name__ == "__main__":
    main()
