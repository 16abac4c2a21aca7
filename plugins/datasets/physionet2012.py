"""PhysioNet/CinC 2012: set-X.tar.gz (members set-X/<RecordID>.txt, Time,Parameter,Value) + Outcomes-X.txt.

Read straight from the tar (no unpacking). Views: ``series`` = (48 hourly bins, 36 variables) means, NaN where
not measured; ``text`` = "variable: value; ..." over the 5 descriptors and 36 series in a fixed order (last
observed value), the serialized form METHOD section 4 bridges to retrieval; ``events`` = every kept observation
per variable (hours, value) + the descriptors, for the summary-statistics expert. A ``tabular`` modality
(``demographics``) reads the 5 descriptors alone as ``fields``: the admission record, which a stay has whether or not
its chart reached the EHR export. Sets a, b, c share the format.
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import re
import tarfile
from collections import Counter
from functools import cached_property

import numpy as np

from ..dataset_options import cli_option
from .archives import read_table, rules_version, tar_records
from .base import AdapterOptions, DatasetAdapter, Failed, Missing, adapter

log = logging.getLogger("medmix.datasets")

DESCRIPTORS = ["Age", "Gender", "Height", "ICUType", "Weight"]
SERIES = ["Albumin", "ALP", "ALT", "AST", "Bilirubin", "BUN", "Cholesterol", "Creatinine", "DiasABP", "FiO2", "GCS",
          "Glucose", "HCO3", "HCT", "HR", "K", "Lactate", "Mg", "MAP", "MechVent", "Na", "NIDiasABP", "NIMAP",
          "NISysABP", "PaCO2", "PaO2", "pH", "Platelets", "RespRate", "SaO2", "SysABP", "Temp", "TroponinI",
          "TroponinT", "Urine", "WBC"]
ICU = {1: "coronary care unit", 2: "cardiac surgery recovery unit", 3: "medical ICU", 4: "surgical ICU"}
ABSURD = 1e6          # no challenge variable comes near it (largest real value: AST 18,430); beyond = corrupt
_TIME = re.compile(r"(\d{1,3}):([0-5]\d)")


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _number(text) -> float | None:
    """A finite number, or None (empty, not a number, NaN/inf)."""
    try:
        v = float(str(text).strip())
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class PhysioNetOptions(AdapterOptions):
    set: str = cli_option("a", "the challenge set (a, b, c): set-<set>.tar.gz + Outcomes-<set>.txt",
                          pattern=r"^[a-z0-9]+$")


@adapter("physionet2012")
class PhysioNet2012(DatasetAdapter):
    version = "3"               # 2: compact serialization; 3: implausible values dropped (pipelines.yaml `plausible`)
    Options = PhysioNetOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.version = rules_version(type(self).version, self.spec)
        self.dropped: Counter = Counter()      # variable -> implausible observations dropped (this process)
        self._warned: set[str] = set()         # modalities whose drops were already a warning (this process)

    @property
    def set_name(self) -> str:
        return self.opts.set                        # typed, default declared once (PhysioNetOptions)

    @cached_property
    def _raw(self) -> dict[str, bytes]:
        """RecordID -> the member's bytes: one pass over the tar; records are parsed only when asked for."""
        path = self.root / f"set-{self.set_name}.tar.gz"
        if not path.exists():
            raise FileNotFoundError(f"{path}: PhysioNet 2012 set '{self.set_name}' not found")
        raw = tar_records(path, re.compile(rf"(?:set-{re.escape(self.set_name)}/)?(\d+)\.txt"), "<RecordID>.txt")
        return dict(sorted(raw.items(), key=lambda kv: int(kv[0])))

    def _record(self, rid: str) -> dict:
        if rid not in self._parsed:
            self._parsed[rid] = self._parse(self._raw[rid], self._member(rid))
        return self._parsed[rid]

    def _member(self, rid: str) -> str:
        return f"set-{self.set_name}.tar.gz:{rid}.txt"

    def where(self, modality: str, row: int) -> str:
        return self._member(self.ids()[row])

    def fingerprint(self, modality: str, row: int) -> str:
        return hashlib.sha256(self._raw[self.ids()[row]]).hexdigest()[:32]

    @cached_property
    def _parsed(self) -> dict[str, dict]:
        return {}

    def _parse(self, raw: bytes, where: str) -> dict:
        """One record -> hourly means; any malformed line fails the record with a reason naming file and line.

        Rules (docs/datasets.md): bytes must be UTF-8; every line is Time,Parameter,Value; Time is HH:MM with
        minutes < 60 and not negative; Value is a finite number within +-1e6. Well-formed observations after the
        window (Time > hours:00) are outside the task and dropped; one at exactly hours:00 goes to the last bin.
        """
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return {"error": f"{where}: invalid UTF-8 at byte {exc.start:,}"}
        hours = int(self.spec.modalities["ehr"].preprocess.get("hours", 48))
        sums = np.zeros((hours, len(SERIES)))
        counts = np.zeros((hours, len(SERIES)))
        last = {}
        desc = {}
        events = {v: ([], []) for v in SERIES}        # the kept observations, (hours, value), for the events view
        col = {v: i for i, v in enumerate(SERIES)}
        dropped: list[str] = []
        reader = csv.reader(io.StringIO(text))
        try:
            for row in reader:
                if not row or row[0] == "Time":
                    continue
                line = f"{where}: line {reader.line_num}"
                if len(row) != 3:
                    return {"error": f"{line}: {len(row)} fields, expected 3 (Time,Parameter,Value)"}
                t, param, raw_value = row
                m = _TIME.fullmatch(t.strip())
                if m is None:
                    return {"error": f"{line}: time {t[:20]!r} is not HH:MM (minutes 00-59, not negative)"}
                try:
                    value = float(raw_value)
                except ValueError:
                    return {"error": f"{line}: {param[:30]} value {raw_value[:20]!r} is not a number"}
                if not math.isfinite(value) or abs(value) > ABSURD:
                    return {"error": f"{line}: {param[:30]} value {raw_value[:20]} is not finite or beyond +-{ABSURD:g}"}
                minute = int(m[1]) * 60 + int(m[2])
                if minute > hours * 60:
                    continue                      # after the window: not part of the task
                if self._implausible(param, value, line, dropped):
                    continue
                if param in DESCRIPTORS and minute == 0 and param not in desc:
                    desc[param] = value
                if param in col and value >= 0 or (param in col and param == "pH"):
                    h = min(hours - 1, minute // 60)
                    sums[h, col[param]] += value
                    counts[h, col[param]] += 1
                    last[param] = value
                    events[param][0].append(minute / 60)
                    events[param][1].append(value)
        except csv.Error as exc:
            return {"error": f"{where}: line {reader.line_num}: {exc}"}
        with np.errstate(invalid="ignore", divide="ignore"):
            series = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).astype(np.float32)
        if dropped:
            log.debug("%s: %d implausible observation(s) dropped: %s", where, len(dropped), "; ".join(dropped[:3]))
        return {"series": series, "last": last, "desc": desc, "events": events, "dropped": dropped}

    def _warn_dropped(self, modality: str, rids: list[str]) -> None:
        """One warning per load call: how many of its records had implausible observations dropped, and examples."""
        hit = [(rid, rec["dropped"]) for rid in rids if (rec := self._record(rid)).get("dropped")]
        if hit:       # a warning the first time per modality (and process), then a line per unit at INFO
            n = sum(len(d) for _, d in hit)
            first = modality not in self._warned
            self._warned.add(modality)
            log.log(logging.WARNING if first else logging.INFO,
                    "%s: %d implausible observation(s) dropped in %d of %d record(s) (rules: pipelines.yaml "
                    "plausible), e.g. %s: %s%s", modality, n, len(hit), len(rids), self._member(hit[0][0]),
                    "; ".join(hit[0][1][:2]), "; the other units' counts follow at INFO" if first else "")

    def _implausible(self, param: str, value: float, line: str, dropped: list[str]) -> bool:
        """True (and counted) when the spec's rule for ``param`` rejects ``value``: the observation is dropped."""
        rule = self.spec.plausible.get(param)
        why = rule.check(value) if rule is not None else None
        if why is None:
            return False
        self.dropped[param] += 1
        dropped.append(f"{line.rsplit(': ', 1)[-1]}: {param} {value:g} {why}")
        return True

    @cached_property
    def _outcomes(self) -> dict[str, dict]:
        path = self.root / f"Outcomes-{self.set_name}.txt"
        if not path.exists():
            raise FileNotFoundError(f"{path}: outcomes for set '{self.set_name}' not found")
        out, conflicts = {}, set()
        for r in read_table(path, ("RecordID", "In-hospital_death", "Length_of_stay")):
            rid = r["RecordID"]
            if rid in out and out[rid] != r:
                conflicts.add(rid)
            out[rid] = r
        for rid in sorted(conflicts):        # which row is right is unknowable: the labels become unknown
            out[rid] = {"RecordID": rid, "In-hospital_death": "", "Length_of_stay": ""}
        if conflicts:
            log.warning("%s: %d RecordID(s) with conflicting duplicate rows: labels unknown (e.g. %s)", path.name,
                        len(conflicts), sorted(conflicts)[:3])
        return out

    def ids(self) -> list[str]:
        return list(self._raw)

    def labels(self) -> dict[str, np.ndarray]:
        mort = np.full((len(self._raw), 1), np.nan, np.float32)
        los = np.full_like(mort, np.nan)
        bad = []
        for i, rid in enumerate(self._raw):
            o = self._outcomes.get(rid)
            if o is None:
                continue
            cell_d, cell_s = (o.get("In-hospital_death") or "").strip(), (o.get("Length_of_stay") or "").strip()
            death, stay = _number(cell_d), _number(cell_s)
            if death not in (None, 0.0, 1.0) or cell_d and death is None:
                bad.append(f"{rid}: In-hospital_death {cell_d[:20]!r}")
                death = None
            if cell_s and stay is None:
                bad.append(f"{rid}: Length_of_stay {cell_s[:20]!r}")
            mort[i, 0] = np.nan if death is None else death
            los[i, 0] = np.nan if stay is None or stay < 0 else float(stay >= 7)
        if bad:
            log.warning("Outcomes-%s.txt: %d label cell(s) not a class of the task (unknown): %s", self.set_name,
                        len(bad), "; ".join(bad[:3]))
        return {"mortality": mort, "los7": los}

    def serialize(self, rec: dict) -> str:
        """'variable: value; ...' over the 5 descriptors and 36 series, fixed order, last value, NA = not measured.

        Challenge abbreviations keep it short (about 170 word pieces, one 256-token window of MiniLM).
        """
        parts = []
        for d in DESCRIPTORS:
            v = rec["desc"].get(d, -1)
            if d == "ICUType" and v in ICU:
                parts.append(f"ICUType: {ICU[int(v)]}")
            elif d == "Gender" and v in (0, 1):
                parts.append(f"Gender: {'male' if v == 1 else 'female'}")
            else:
                parts.append(f"{d}: {_fmt(v) if v is not None and v >= 0 else 'NA'}")
        for s in SERIES:
            v = rec["last"].get(s)
            parts.append(f"{s}: {_fmt(v) if v is not None else 'NA'}")
        return "; ".join(parts)

    def load(self, modality: str, rows: list[int]):
        """``ehr`` (kind ehr): series, text and events views; a ``tabular`` modality: the descriptors recorded at
        admission as ``fields`` (Missing when none was recorded), the admission record a stay has before any chart."""
        keys = self.ids()
        tabular = self.spec.modalities[modality].kind == "tabular"
        out = []
        self._warn_dropped(modality, [keys[r] for r in rows])
        for r in rows:
            rec = self._record(keys[r])
            if "error" in rec:
                out.append(Failed(rec["error"]))
            elif tabular:
                fields = self.static(rec)
                known = any(np.isfinite(v) for v in fields["numeric"].values()) or any(
                    v is not None for v in fields["categorical"].values())
                out.append({"fields": fields} if known else
                           Missing(f"{self._member(keys[r])}: no descriptor recorded at 00:00"))
            elif not np.isfinite(rec["series"]).any():
                out.append(Failed(f"{self._member(keys[r])}: all series are empty"))
            else:
                out.append({"series": rec["series"], "text": self.serialize(rec), "events": self.events(rec)})
        return out

    def events(self, rec: dict) -> dict:
        """The ``events`` view (summary-statistics expert): every kept observation of each series variable, in
        hours since admission, and the descriptors as static fields."""
        return {"variables": {v: (np.asarray(t, np.float32), np.asarray(x, np.float32))
                              for v, (t, x) in rec["events"].items()},
                "window_hours": float(self.spec.modalities["ehr"].preprocess.get("hours", 48)),
                "static": self.static(rec)}

    @staticmethod
    def static(rec: dict) -> dict:
        """The descriptors as structured fields (the tabular expert's ``fields``); -1 (not recorded) -> missing."""
        d = {k: v for k, v in rec["desc"].items() if v is not None and v >= 0}
        gender = {0: "female", 1: "male"}.get(int(d["Gender"])) if "Gender" in d else None
        return {"numeric": {k: d.get(k, np.nan) for k in ("Age", "Height", "Weight")},
                "categorical": {"Gender": gender, "ICUType": ICU.get(int(d["ICUType"])) if "ICUType" in d else None}}
