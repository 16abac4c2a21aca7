"""What a run trains: the asked methods (each teacher alone for 'large') and, with ``--ablations``, MedMIX variants
that each remove one component (distillation, intra-modality fusion, an expert role, all but one modality)."""
from __future__ import annotations

from .data import Data


def subset(modalities=None, drop_role_experts=None, roles=None, only_expert=None):
    """Ablation views of the data: some modalities, no experts of a role, or one named expert where present."""
    def sub(data: Data) -> Data:
        layout, xs, masks = {}, {}, {}
        for m, names in data.layout.items():
            if modalities and m not in modalities:
                continue
            keep = [k for k, n in enumerate(names) if not drop_role_experts or roles.get(f"{m}/{n}") not in drop_role_experts]
            if only_expert and only_expert in names:
                keep = [names.index(only_expert)]
            if keep:
                layout[m], xs[m], masks[m] = [names[k] for k in keep], [data.xs[m][k] for k in keep], data.masks[m][:, keep]
        teachers = {m: t for m, t in data.teachers.items() if m in layout}
        return Data(layout, xs, masks, data.y, data.tasks, teachers, {m: data.teacher_masks[m] for m in teachers}, data.split)
    return sub


def plan(methods: list[str], data: Data, ablations: bool, roles: dict | None = None) -> dict:
    plan = {}
    for m in methods:
        if m == "large":
            for mod in data.teachers:
                plan[f"{mod}-large"] = ("large", None, mod)
        else:
            plan[m] = (m, None, None)
    if ablations:
        plan["medmix w/o distillation"] = ("medmix_nodistill", None, None)
        plan["medmix w/o intra-fusion (uniform mean)"] = ("medmix_mean", None, None)
        for name in sorted({n for names in data.layout.values() for n in names}):
            if any(len(names) > 1 and name in names for names in data.layout.values()):
                plan[f"medmix single expert '{name}' per modality"] = ("medmix", subset(only_expert=name), None)
        present = {roles.get(f"{m}/{n}") for m, names in data.layout.items() for n in names} - {None}
        for role in sorted(present):
            if len(present) > 1:
                plan[f"medmix w/o {role} experts"] = ("medmix", subset(drop_role_experts={role}, roles=roles), None)
        if len(data.layout) > 1:
            for mod in data.layout:
                plan[f"medmix {mod} only"] = ("medmix", subset(modalities=[mod]), None)
    return plan


