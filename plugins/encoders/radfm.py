"""RadFM's 3-D vision tower (Wu et al., 2023): a 3-D ViT on 32 x 32 x 4 patches, then a perceiver resampler to 32
visual tokens, the ones RadFM hands its language model. The paper's CT teacher (METHOD section 1).

RadFM ships as repository code plus one ``pytorch_model.bin`` for the whole 14 B model (MedLLaMA-13B included). The
modules below carry RadFM's own names (``embedding_layer.vision_encoder.*`` and ``embedding_layer.perceiver.*`` in
that file), so only those tensors are read (memory-mapped, ``weights_only=True``) and loaded with ``strict=True``;
the language model is never materialised. Embedding = mean of the perceiver's latents (768-d), or with
``pool: tokens`` the mean of the ViT's patch tokens.

Preprocessing is RadFM's: volume min-max scaled to [0, 1], grey copied to 3 channels, nearest-neighbour resize to
512 x 512 x D' where D' is the multiple of 4 in [4, 64] nearest the slice count. The volume is the RAS ``volume``
view (x, y, z), which is the (h, w, d) order RadFM reads NIfTI files in.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register
from ..sources import read_checkpoint
from .volume_base import VolumeEncoder, VolumeParams


class RadFMParams(VolumeParams):
    vit: dict[str, Any] | None = None         # 3-D ViT sizes (default RadFM's)
    perceiver: dict[str, Any] | None = None   # perceiver sizes (default RadFM's)
    size: int = 512                           # in-plane size after resizing
    max_depth: int = 64


PREFIXES = ("embedding_layer.", "")
PARTS = ("vision_encoder.", "perceiver.")


class PositionEmbedding3d(nn.Module):
    """Learned absolute position per axis (row / col / depth), concatenated: dim = 3 x per_axis."""

    def __init__(self, per_axis: int, h: int, w: int, d: int):
        super().__init__()
        self.grid = (h, w, d)
        self.row_embed = nn.Embedding(h, per_axis)
        self.col_embed = nn.Embedding(w, per_axis)
        self.dep_embed = nn.Embedding(d, per_axis)

    def forward(self, h: int, w: int, d: int, device) -> torch.Tensor:
        """[h*w*d, 3*per_axis]; a coarser grid than trained takes every (grid // n)-th entry, as RadFM does."""
        idx = [(torch.arange(n, device=device) + 1) * (full // n) - 1 for n, full in zip((h, w, d), self.grid)]
        r, c, z = self.row_embed(idx[0]), self.col_embed(idx[1]), self.dep_embed(idx[2])
        per = r.shape[-1]
        pos = torch.cat([r[:, None, None].expand(h, w, d, per), c[None, :, None].expand(h, w, d, per),
                         z[None, None, :].expand(h, w, d, per)], dim=-1)
        return pos.reshape(h * w * d, 3 * per)


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.norm(x))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(dim, heads * dim_head * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(0.0))

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.to_qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)           # scale 1/sqrt(dim_head), as RadFM's
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim))

    def forward(self, x):
        return self.net(x)


class Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleList([PreNorm(dim, SelfAttention(dim, heads, dim_head)),
                                                   PreNorm(dim, FeedForward(dim, mlp_dim))]) for _ in range(depth))

    def forward(self, x):
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return x


class ViT3d(nn.Module):
    """Patches (p, p, pf) of a [B, C, H, W, D] volume -> LayerNorm/Linear/LayerNorm -> + 3-D position -> transformer."""

    def __init__(self, image_size=512, frames=512, patch=32, frame_patch=4, dim=768, depth=12, heads=8,
                 dim_head=64, mlp_dim=2048, channels=3):
        super().__init__()
        if image_size % patch or frames % frame_patch or dim % 3:
            raise ValueError(f"RadFM ViT: image_size {image_size} / patch {patch}, frames {frames} / frame_patch "
                             f"{frame_patch} must divide, and dim {dim} must be a multiple of 3")
        self.patch, self.frame_patch = patch, frame_patch
        patch_dim = channels * patch * patch * frame_patch
        # index 0 is RadFM's einops Rearrange (no weights); kept so the checkpoint's .1/.2/.3 keys line up
        self.to_patch_embedding = nn.Sequential(nn.Identity(), nn.LayerNorm(patch_dim), nn.Linear(patch_dim, dim),
                                                nn.LayerNorm(dim))
        self.pos_embedding = PositionEmbedding3d(dim // 3, image_size // patch, image_size // patch,
                                                 frames // frame_patch)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """'b c (h p1) (w p2) (f pf) -> b (h w f) (p1 p2 pf c)'."""
        b, c, hh, ww, ff = x.shape
        p, pf = self.patch, self.frame_patch
        x = x.reshape(b, c, hh // p, p, ww // p, p, ff // pf, pf).permute(0, 2, 4, 6, 3, 5, 7, 1)
        return x.reshape(b, (hh // p) * (ww // p) * (ff // pf), p * p * pf * c)

    def forward(self, x):
        h, w, d = x.shape[2] // self.patch, x.shape[3] // self.patch, x.shape[4] // self.frame_patch
        tokens = self.to_patch_embedding(self.patchify(x))
        return self.transformer(tokens + self.pos_embedding(h, w, d, x.device))


class PerceiverAttention(nn.Module):
    """Flamingo's: latents attend to [media; latents]."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        self.norm_media, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, heads * dim_head * 2, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x, latents):
        x, latents = self.norm_media(x), self.norm_latents(latents)
        b, n, _ = latents.shape
        q = self.to_q(latents).view(b, n, self.heads, -1).transpose(1, 2)
        kv = torch.cat([x, latents], dim=1)
        k, v = self.to_kv(kv).view(b, kv.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class PerceiverResampler(nn.Module):
    def __init__(self, dim=768, depth=6, heads=8, dim_head=64, num_latents=32, ff_mult=4):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.layers = nn.ModuleList(nn.ModuleList([
            PerceiverAttention(dim, heads, dim_head),
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * ff_mult, bias=False), nn.GELU(),
                          nn.Linear(dim * ff_mult, dim, bias=False))]) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        latents = self.latents[None].expand(x.shape[0], -1, -1)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm(latents)


class RadFMVision(nn.Module):
    """The two parts of RadFM's ``embedding_layer`` that turn a volume into visual tokens."""

    def __init__(self, vit: dict | None = None, perceiver: dict | None = None):
        super().__init__()
        self.vision_encoder = ViT3d(**(vit or {}))
        dim = self.vision_encoder.to_patch_embedding[2].out_features
        self.perceiver = PerceiverResampler(dim=dim, **(perceiver or {}))
        self.dim = dim

    def forward(self, x, pool: str = "perceiver"):
        tokens = self.vision_encoder(x)
        return tokens.mean(dim=1) if pool == "tokens" else self.perceiver(tokens).mean(dim=1)


def target_depth(n_slices: int, max_depth: int = 64) -> int:
    """RadFM's choice: the multiple of 4 in [4, max_depth] nearest the slice count (ties -> the smaller)."""
    return min(range(4, max_depth + 1, 4), key=lambda d: (abs(d - n_slices), d))


def radfm_preprocess(hu: np.ndarray, size: int = 512, max_depth: int = 64) -> torch.Tensor:
    """Volume [X, Y, Z] -> [3, size, size, D'] in [0, 1] (min-max, nearest resize), as RadFM's data loaders do."""
    x = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))
    if x.ndim != 3 or min(x.shape) < 1:
        raise ValueError(f"expected a 3-D volume, got shape {tuple(x.shape)}")
    lo, hi = x.min(), x.max()
    x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    x = F.interpolate(x[None, None], size=(size, size, target_depth(x.shape[2], max_depth)), mode="nearest")
    return x[0].expand(3, -1, -1, -1)


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """RadFM's checkpoint (a .bin/.pt read memory-mapped with weights_only=True, a .safetensors file, or a folder of
    either) -> the vision tower's and perceiver's tensors under RadFMVision's names; the LM's tensors are not read."""
    files = [path] if path.is_file() else sorted([*path.glob("*.safetensors"), *path.glob("*.bin"),
                                                  *path.glob("*.pt"), *path.glob("*.pth")])
    if not files:
        raise FileNotFoundError(f"{path}: no RadFM weight file (.bin/.pt/.pth/.safetensors)")
    wanted = tuple(p + part for p in PREFIXES for part in PARTS)
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(f), "pt") as fh:
                sd.update({k: fh.get_tensor(k) for k in fh.keys() if k.startswith(wanted)})
        else:
            sd.update({k: v for k, v in read_checkpoint(f).items() if k.startswith(wanted)})   # mapped: 28 GB ok
    prefix = next((p for p in PREFIXES if any(k.startswith(p + PARTS[0]) for k in sd)), None)
    if prefix is None:
        raise KeyError(f"{path}: no RadFM vision tower ({PREFIXES[0]}{PARTS[0]}*) in the checkpoint")
    keep = tuple(prefix + part for part in PARTS)
    return {k[len(prefix):]: v.float() for k, v in sd.items() if k.startswith(keep)}


RADFM_UNPACK = ("chaoyi-wu/RadFM holds its weights as a split zip (RadFM.z01-RadFM.z04 + RadFM.zip), not a loadable "
                "file: `python -m extract fetch --profile paper` downloads and joins it when the `zip` tool is "
                "installed; by hand: `hf download chaoyi-wu/RadFM --local-dir DIR`, `zip -s 0 DIR/RadFM.zip --out "
                "DIR/joined.zip`, `unzip DIR/joined.zip -d DIR`; then set `models: {radfm: {source: "
                "DIR/pytorch_model.bin}}` (see `python -m extract doctor`)")


@register("radfm", modality="volume", role="teacher", dim=768, licence="unstated (chaoyi-wu/RadFM)",
          source="chaoyi-wu/RadFM", params_m=104.0, licence_url="https://huggingface.co/chaoyi-wu/RadFM")
class RadFM(VolumeEncoder):
    """RadFM's 3-D ViT + perceiver (768-d): the paper's CT teacher. The hub's split zip unpacks to pytorch_model.bin."""
    Params = RadFMParams

    pooling = "perceiver"
    default_filename = "pytorch_model.bin"

    def _official(self) -> bool:
        return self.card.source == (self.options.source or self.card.source) and "filename" not in self.params

    def hub_files(self) -> list[str]:
        return [f"unpacked/{self.default_filename}"] if self._official() else super().hub_files()

    def hub_download(self) -> list[str]:
        return ["RadFM.z*"] if self._official() else super().hub_download()

    def after_fetch(self, snapshot: Path) -> None:
        """Join the split zip (`zip -s 0`, the one tool that reads zip's own split format) and unpack it."""
        import shutil
        import subprocess
        if not self._official() or (snapshot / "unpacked" / self.default_filename).exists():
            return
        if not shutil.which("zip") or not shutil.which("unzip"):
            raise FileNotFoundError(f"radfm: joining RadFM.z01-z04 + RadFM.zip needs the zip and unzip tools; "
                                    f"{RADFM_UNPACK}")
        out = snapshot / "unpacked"
        out.mkdir(exist_ok=True)
        subprocess.run(["zip", "-s", "0", str(snapshot / "RadFM.zip"), "--out", str(out / "joined.zip")], check=True)
        subprocess.run(["unzip", "-o", "-j", str(out / "joined.zip"), "*.bin", "-d", str(out)], check=True)
        (out / "joined.zip").unlink()

    def weight_location(self) -> Path:
        """A hub repo holding the unpacked file (``params.filename``) downloads; the official repo's split zip cannot
        be loaded as is, so it is an error saying how to unpack it (or the copy `extract fetch` unpacked)."""
        if self.resolved.kind == "hub" and self.resolved.location == "chaoyi-wu/RadFM":
            from ..sources import cached_snapshot
            snap = cached_snapshot(self.resolved.location, self.options.revision)
            unpacked = snap / "unpacked" / self.default_filename if snap else None
            if unpacked is not None and unpacked.exists():
                return unpacked
            if "filename" not in self.params:
                raise FileNotFoundError(f"radfm: {RADFM_UNPACK}")
        return super().weight_location()

    def _build(self):
        p = self.params
        if self.pooling not in ("perceiver", "tokens"):
            raise ValueError(f"radfm: pooling must be 'perceiver' or 'tokens', not {self.pooling!r}")
        model = RadFMVision(p.get("vit"), p.get("perceiver"))
        model.load_state_dict(load_state(self.weight_location()), strict=True)
        self.size = int(p.get("size", 512))
        self.max_depth = int(p.get("max_depth", 64))
        return model.to(self.device).eval(), None, self.gpu_precision()

    def _embed_volume(self, volume: dict) -> torch.Tensor:
        x = radfm_preprocess(volume["hu"], self.size, self.max_depth)[None].to(self.device)
        return self.model(x, self.pooling)

    def _probe_dim(self) -> int:
        return int((self.params.get("vit") or {}).get("dim", 768))
