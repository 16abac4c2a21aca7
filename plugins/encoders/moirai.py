"""MOIRAI (uni2ts): an any-variate time-series transformer, the paper's biomedical EHR expert.

Unlike Chronos, MOIRAI reads all variables of a stay as ONE packed sequence (tokens = patches of each variable,
``variate_id`` telling them apart), so variables attend to each other. The embedding is the mean of the final hidden
states over the observed patches. Variables with no observation are left out (their ``variate_id`` is kept, so adding
an empty column changes nothing). uni2ts pins old numpy/pandas: it is the optional extra ``moirai`` (docs/models.md).
"""
from __future__ import annotations

import numpy as np
import torch

from stores.cli import INSTALL_HINTS

from ..registry import Encoder, NoParams, register


class MoiraiParams(NoParams):
    patch_size: int | None = None            # hours per patch (one of the module's patch sizes; default 16)


def _import_uni2ts():
    try:
        from uni2ts.common.torch_util import packed_attention_mask
        from uni2ts.model.moirai import MoiraiModule
    except ImportError as e:
        raise ImportError(f"MOIRAI needs uni2ts (the optional extra: {INSTALL_HINTS['uni2ts']}, best in its own "
                          f"environment: it pins numpy~=1.26): {e}") from e
    return MoiraiModule, packed_attention_mask


class MoiraiEncoder(Encoder):
    Params = MoiraiParams
    batch_size = 64
    pooling = "mean"
    patch_size = 16          # one of the module's patch sizes; 16 h patches -> 3 tokens per variable for 48 h

    def _build(self):
        module_cls, self._attention_mask = _import_uni2ts()
        kw = {"revision": self.options.revision} if self.resolved.kind == "hub" and self.options.revision else {}
        model = module_cls.from_pretrained(self.resolved.location, **kw).to(self.device).eval()
        p = int(self.params.get("patch_size", self.patch_size))
        if p not in tuple(model.patch_sizes):
            raise ValueError(f"{self.card.key}: patch_size {p} is not one of the model's {tuple(model.patch_sizes)}")
        self.patch = p
        return model, None, self.gpu_precision()

    def _pack(self, i: int, x: np.ndarray):
        """(T, V) hourly array -> per-token patches (L, P), observed mask, time ids, variate ids."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"item {i}: expected a (time, variables) array, got shape {x.shape}")
        p = self.patch
        pad = (-x.shape[0]) % p                                 # left-pad with "not observed", as MoiraiForecast does
        x = np.concatenate([np.full((pad, x.shape[1]), np.nan, np.float32), x]) if pad else x
        n = x.shape[0] // p
        keep = [v for v in range(x.shape[1]) if np.isfinite(x[:, v]).any()]
        if not keep:
            raise ValueError(f"item {i}: every variable is empty")
        patches = x[:, keep].T.reshape(len(keep) * n, p)       # variable-major: var0 t0..tn, var1 t0..tn, ...
        time_id = np.tile(np.arange(n), len(keep))
        var_id = np.repeat(np.asarray(keep), n)
        return patches, time_id, var_id

    def _forward(self, items: list) -> np.ndarray:
        out = []
        for b in range(0, len(items), self.batch_size):
            out.append(self._embed_batch([self._pack(b + j, x) for j, x in enumerate(items[b:b + self.batch_size])]))
        return np.concatenate(out)

    def _embed_batch(self, packed: list) -> np.ndarray:
        m, dev = self.model, self.device
        max_patch, length = max(m.patch_sizes), max(len(t) for _, t, _ in packed)
        target = torch.zeros(len(packed), length, max_patch)
        observed = torch.zeros(len(packed), length, max_patch, dtype=torch.bool)
        sample_id = torch.zeros(len(packed), length, dtype=torch.long)  # 0 = padding token
        time_id = torch.zeros_like(sample_id)
        var_id = torch.zeros_like(sample_id)
        for k, (patches, t, v) in enumerate(packed):
            L = len(t)
            ok = np.isfinite(patches)
            target[k, :L, :self.patch] = torch.from_numpy(np.where(ok, patches, 0.0))
            observed[k, :L, :self.patch] = torch.from_numpy(ok)
            sample_id[k, :L] = 1
            time_id[k, :L] = torch.from_numpy(t)
            var_id[k, :L] = torch.from_numpy(v)
        target, observed, sample_id, time_id, var_id = (a.to(dev) for a in (target, observed, sample_id, time_id, var_id))
        patch_size = torch.full_like(sample_id, self.patch)
        loc, scale = m.scaler(target, observed, sample_id, var_id)
        reprs = m.in_proj((target - loc) / scale, patch_size)
        reprs = m.encoder(reprs, self._attention_mask(sample_id), time_id=time_id, var_id=var_id).float()
        use = ((sample_id > 0) & observed.any(-1)).unsqueeze(-1).float()
        return ((reprs * use).sum(1) / use.sum(1).clamp(min=1)).cpu().numpy()

    def _probe_dim(self) -> int:
        self.load()
        return int(self.model.d_model)


@register("moirai_small", modality="series", role="biomedical", dim=384, licence="CC-BY-NC-4.0",
          source="Salesforce/moirai-1.0-R-small", params_m=13.8,
          licence_url="https://creativecommons.org/licenses/by-nc/4.0/")
class MoiraiSmall(MoiraiEncoder):
    """MOIRAI-1.0-R small: EHR expert (any-variate, all 36/46 variables in one sequence)."""


@register("moirai_base", modality="series", role="biomedical", dim=768, licence="CC-BY-NC-4.0",
          source="Salesforce/moirai-1.0-R-base", params_m=91.4,
          licence_url="https://creativecommons.org/licenses/by-nc/4.0/")
class MoiraiBase(MoiraiEncoder):
    """MOIRAI-1.0-R base."""
    batch_size = 32
