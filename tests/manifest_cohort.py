"""A cohort of real files given as one manifest table, built the way a hospital team would hand it over: per patient
a PhysioNet 2012 stay exported as its own events file, an OpenI report inline as the note, and on a few rows the
real X-ray, the two real CT volumes, the real slide (under two names) and a truncated copy of it."""
from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path

SLIDE = "CMU-1-Small-Region.svs"


def build_cohort(data: Path, folder: Path, n: int = 80) -> dict:
    """Write folder/cohort.csv and the files it names; returns what each row was given (for the assertions)."""
    folder.mkdir(parents=True, exist_ok=True)
    stays = _stays(data, folder / "ehr", n)
    outcomes = {r["RecordID"]: r for r in csv.DictReader(open(data / "physionet2012" / "Outcomes-a.txt"))}
    reports = json.loads((data / "openi" / "reports_ori.json").read_text())
    notes = [" ".join(str(r["report"].get(k) or "") for k in ("FINDINGS", "IMPRESSION")).strip()
             for r in list(reports.values())[:n]]
    files = {"cxr": {0: "cxr/CXR3_IM-1384-1001.png"},
             "ct": {1: "ct/example_ct_sm.nii.gz", 2: "ct/example_seg.nii.gz"},
             "wsi": {3: "slides/slide_a.svs", 4: "slides/slide_b.svs", 5: "slides/truncated.svs"}}
    for sub in ("cxr", "ct", "slides"):
        (folder / sub).mkdir(exist_ok=True)
    (folder / files["cxr"][0]).symlink_to(data / "openi" / "CXR3_IM-1384-1001.png")
    for name in ("example_ct_sm.nii.gz", "example_seg.nii.gz"):
        (folder / "ct" / name).symlink_to(data / "ct" / name)
    for name in ("slide_a.svs", "slide_b.svs"):
        (folder / "slides" / name).symlink_to(data / "wsi" / SLIDE)
    (folder / files["wsi"][5]).write_bytes((data / "wsi" / SLIDE).read_bytes()[:400_000])
    deaths = [outcomes[s]["In-hospital_death"] for s in stays]
    split = _split(deaths)
    rows, given = [], {"note": set(), "ehr": set()}
    for i, sid in enumerate(stays):
        note = notes[i] if i % 7 != 6 else ""          # every 7th note left empty: missing
        ehr = f"ehr/{sid}.txt" if i % 9 != 8 else ""    # every 9th vitals export left empty: missing
        given["note"] |= {i} if note else set()
        given["ehr"] |= {i} if ehr else set()
        rows.append({"id": sid, "split": split[i], "death": deaths[i], "note": note, "ehr": ehr,
                     **{m: files[m].get(i, "") for m in files}})
    with open(folder / "cohort.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    given.update({m: set(files[m]) for m in files})
    return {"ids": stays, "given": given, "truncated_row": 5, "split": split, "death": deaths}


def _stays(data: Path, out: Path, n: int) -> list[str]:
    """The first n stays of set-a, each written as its own events file (Time,Parameter,Value, as exported)."""
    out.mkdir(parents=True, exist_ok=True)
    ids = []
    with tarfile.open(data / "physionet2012" / "set-a.tar.gz") as tar:
        for m in tar:
            if m.isfile() and m.name.endswith(".txt"):
                sid = m.name.rsplit("/", 1)[-1][:-4]
                (out / f"{sid}.txt").write_bytes(tar.extractfile(m).read())
                ids.append(sid)
                if len(ids) == n:
                    break
    return ids


def _split(labels: list[str]) -> list[str]:
    """Each class dealt round-robin over 3 train, 1 val, 1 test, so every split holds both classes."""
    order, seen, out = ["train", "train", "val", "train", "test"], {}, []
    for y in labels:
        k = seen.get(y, 0)
        out.append(order[k % len(order)])
        seen[y] = k + 1
    return out
