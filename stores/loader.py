"""Store -> in-memory tensors + masks for training, in one call.

The train stage never touches Zarr rows one by one: each chosen expert is read once, whole, into a float32 tensor
with a boolean mask (valid == ok). Rows that are missing or failed are zeroed, so their values cannot leak.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .store import OK, SPLIT_CODES, Store, StoreError


@dataclass
class Bundle:
    ids: list[str]
    split: np.ndarray                                       # int8 codes, see SPLIT_CODES
    labels: dict[str, torch.Tensor]                         # task -> (N, C) float32, NaN = unknown
    label_meta: dict[str, dict]
    experts: dict[str, dict[str, torch.Tensor]]             # modality -> expert -> (N, D)
    masks: dict[str, dict[str, torch.Tensor]]               # modality -> expert -> (N,) bool
    teachers: dict[str, torch.Tensor] = field(default_factory=dict)       # modality -> (N, D_T)
    teacher_masks: dict[str, torch.Tensor] = field(default_factory=dict)  # modality -> (N,) bool
    provenance: dict[str, dict] = field(default_factory=dict)            # "modality/expert" -> {config_hash, model}

    @property
    def n(self) -> int:
        return len(self.ids)

    def index(self, part: str) -> torch.Tensor:
        return torch.from_numpy(np.flatnonzero(self.split == SPLIT_CODES[part]))

    def modality_available(self) -> dict[str, torch.Tensor]:
        return {m: torch.stack(list(ms.values()), 1).any(1) for m, ms in self.masks.items()}

    def to(self, device: torch.device | str) -> "Bundle":
        mv = lambda d: {k: (mv(v) if isinstance(v, dict) else v.to(device)) for k, v in d.items()}  # noqa: E731
        return Bundle(self.ids, self.split, mv(self.labels), self.label_meta, mv(self.experts), mv(self.masks),
                      mv(self.teachers), mv(self.teacher_masks), self.provenance)


TEACHER = "teacher"


def _read(group) -> tuple[torch.Tensor, torch.Tensor]:
    valid = group.group["valid"][:]
    mask = valid == OK
    vec = group.group["vectors"][:].astype(np.float32)
    vec[~mask] = 0.0
    return torch.from_numpy(vec), torch.from_numpy(mask)


def load_bundle(store: Store | str, select: dict[str, list[str]] | None = None, teachers: bool = True,
                versions: dict[str, str] | None = None) -> Bundle:
    """Load the chosen experts (modality -> expert names; None = all) and their teachers.

    ``versions`` maps "modality/expert" to a config hash; otherwise the latest group of each expert is used.
    """
    store = store if isinstance(store, Store) else Store(store)
    versions = versions or {}
    select = select or {m: [e for e in store.experts(m) if e != TEACHER] for m in store.modalities()}
    experts, masks, prov = {}, {}, {}
    t_vec, t_mask = {}, {}
    for mod, names in select.items():
        if not names:
            continue
        experts[mod], masks[mod] = {}, {}
        for name in names:
            g = store.expert_group(mod, name, versions.get(f"{mod}/{name}"))
            experts[mod][name], masks[mod][name] = _read(g)
            prov[f"{mod}/{name}"] = {"config_hash": g.attrs["config_hash"],
                                     "model": g.attrs.get("provenance", {}).get("model"),
                                     "role": g.attrs.get("provenance", {}).get("role")}
        if teachers and mod in store.modalities() and TEACHER in store.experts(mod):
            g = store.expert_group(mod, TEACHER, versions.get(f"{mod}/{TEACHER}"))
            t_vec[mod], t_mask[mod] = _read(g)
            prov[f"{mod}/{TEACHER}"] = {"config_hash": g.attrs["config_hash"],
                                        "model": g.attrs.get("provenance", {}).get("model"), "role": "teacher"}
    if not experts:
        raise StoreError(f"{store.url}: no experts selected or present")
    labels, meta = {}, {}
    for task, (values, attrs) in store.labels().items():
        labels[task] = torch.from_numpy(values.astype(np.float32))
        meta[task] = attrs
    return Bundle(store.ids(), store.split(), labels, meta, experts, masks, t_vec, t_mask, prov)
