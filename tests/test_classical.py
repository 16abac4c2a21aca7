"""Classical experts: EHR summary statistics (ehr_stats) and structured clinical fields (tabular).

Statistics are checked against a direct pandas computation; encodings are fitted on training rows only, stored
with the expert and reproduced exactly for another cohort; both experts cache and resume like any other.
"""
import io
import tarfile

import numpy as np
import pandas as pd
import pytest

from plugins.encoders.stats import STATS, summary_statistics
from plugins.encoders.tabular import TabularEncoding
from extract.pipeline import extract_dataset
from plugins.registry import EncoderOptions, build_encoder
from extract.run.context import clear_caches
from stores.spec import SpecError, load_spec
from stores.store import OK, SPLIT_CODES, Store
from stores.verify import verify
from test_mimic4mm import mimic_root  # noqa: F401  (the fixture: a small MIMIC-IV in the official layout)

W = 48.0
# fixture stay: HR several points (one tie in time, one at the window end), Na one observation, Lactate empty,
# Temp only out-of-window times (-> empty), K in and out of the window
EVENTS = pd.DataFrame([("HR", 0.0, 80), ("HR", 1.5, 90), ("HR", 1.5, 95), ("HR", 30.0, 70), ("HR", 48.0, 100),
                       ("HR", 49.0, 300), ("Na", 12.25, 140), ("Temp", -1.0, 37.0), ("Temp", 50.0, 38.0),
                       ("K", -0.5, 9.0), ("K", 2.0, 4.0), ("K", 47.0, 3.5), ("K", 60.0, 1.0)],
                      columns=["var", "t", "v"])
NAMES = ["HR", "Na", "Lactate", "Temp", "K"]


def _variables(df: pd.DataFrame) -> dict:
    return {n: (df.loc[df["var"] == n, "t"].to_numpy(np.float32), df.loc[df["var"] == n, "v"].to_numpy(np.float32))
            for n in NAMES}


def _pandas_stats(df: pd.DataFrame, window: float) -> pd.DataFrame:
    """The reference: the same statistics written directly with pandas."""
    d = df[(df["t"] >= 0) & (df["t"] <= window)].sort_values("t", kind="stable")
    rows = {}
    for n in NAMES:
        g = d[d["var"] == n]
        if g.empty:
            rows[n] = [0.0] + [np.nan] * (len(STATS) - 1)
            continue
        var_t = g["t"].var(ddof=0)
        slope = g["t"].cov(g["v"], ddof=0) / var_t if var_t > 0 else 0.0
        rows[n] = [np.log1p(len(g)), g["v"].mean(), g["v"].std(ddof=0), g["v"].min(), g["v"].max(),
                   g["v"].iloc[0], g["v"].iloc[-1], slope, window - g["t"].max()]
    return pd.DataFrame.from_dict(rows, orient="index", columns=STATS)


def test_statistics_equal_a_direct_pandas_computation():
    got = summary_statistics(_variables(EVENTS), W, NAMES)
    want = _pandas_stats(EVENTS, W).loc[NAMES].to_numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=True)
    hr = dict(zip(STATS, got[0]))
    assert hr["max"] == 100 and hr["last"] == 100                # t = 49 h lies outside the window
    assert np.exp(got[1, 0]) - 1 == pytest.approx(1) and got[1, STATS.index("std")] == 0      # single observation
    assert got[1, STATS.index("slope")] == 0
    assert got[2, 0] == 0 and np.isnan(got[2, 1:]).all()        # empty variable
    assert got[3, 0] == 0 and np.isnan(got[3, 1:]).all()        # only out-of-window observations
    assert got[4, STATS.index("first")] == 4.0 and got[4, STATS.index("last")] == 3.5
    narrow = summary_statistics(_variables(EVENTS), 24.0, NAMES)
    np.testing.assert_allclose(narrow, _pandas_stats(EVENTS, 24.0).loc[NAMES].to_numpy(), rtol=1e-5, equal_nan=True)


def _stay(df, age=None, sex=None):
    return {"variables": _variables(df), "window_hours": W,
            "static": {"numeric": {"Age": np.nan if age is None else age}, "categorical": {"Gender": sex}}}


def test_missing_variables_are_flagged_not_read_as_zero():
    rng = np.random.default_rng(0)
    train = []
    for i in range(30):
        d = EVENTS.copy()
        d["v"] = d["v"] + rng.normal(0, 5, len(d))
        train.append(_stay(d, age=float(40 + i), sex="male" if i % 2 else "female"))
    enc = build_encoder("ehr_stats")
    state = enc.fit(train)
    enc = build_encoder("ehr_stats", EncoderOptions(params={"encoding": state}))
    cols = enc.columns()
    assert enc.dim == len(cols) == len(NAMES) * (len(STATS) + 1) + 2 + 3
    zero_na = pd.concat([EVENTS[EVENTS["var"] != "Na"], pd.DataFrame([("Na", 3.0, 0.0)], columns=["var", "t", "v"])])
    no_na = EVENTS[EVENTS["var"] != "Na"]
    v = enc.encode([_stay(zero_na, age=50, sex="male"), _stay(no_na)])
    flag = cols.index("Na:missing")
    assert v[0, flag] == 0 and v[1, flag] == 1                  # a measured 0 and an absent variable differ
    assert v[1, cols.index("Na:mean")] == 0                     # absent: the training mean (standardised 0) ...
    assert v[0, cols.index("Na:mean")] != 0                     # ... while a real 0 is far from it
    assert v[1, cols.index("Age:missing")] == 1 and v[1, cols.index("Gender:missing")] == 1
    assert v[0, cols.index("Gender=male")] == 1 and v[0, cols.index("Gender=female")] == 0
    with pytest.raises(ValueError, match="absent"):
        enc.encode([{**_stay(EVENTS), "variables": {k: x for k, x in _variables(EVENTS).items() if k != "K"}}])


def test_tabular_encoding_round_trips_and_handles_unseen_and_missing():
    enc = TabularEncoding.fit({"x": np.array([1.0, 3.0, np.nan])}, {"c": ["a", "b", None]})
    assert enc.state() == TabularEncoding(enc.state()).state()
    assert enc.columns() == ["x", "x:missing", "c=a", "c=b", "c:missing"]
    np.testing.assert_array_equal(enc.transform({"x": 3.0}, {"c": "b"}), [1, 0, 0, 1, 0])
    np.testing.assert_array_equal(enc.transform({"x": np.nan}, {"c": None}), [0, 1, 0, 0, 1])
    np.testing.assert_array_equal(enc.transform({"x": 2.0}, {"c": "zzz"}), [0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="absent from the input: c"):
        enc.transform({"x": 1.0}, {})


def test_an_unfitted_encoder_says_so():
    with pytest.raises(ValueError, match="not fitted"):
        build_encoder("tabular").encode([{"numeric": {}, "categorical": {}}])


# ---- through the runner: fitted on train rows, stored, reproduced, cached -----------------------------------------
@pytest.fixture
def classical_spec(spec_writer):
    def edit(raw):
        raw["defaults"]["chunk_rows"] = 32
        raw["profiles"]["offline"]["kinds"]["ehr"] = {
            "experts": {"stats": {"model": "ehr_stats", "role": "classical", "view": "events"}}}
    return spec_writer(edit)


def _group(path, mod, name):
    return Store(path, mode="a").expert_group(mod, name)


def test_tabular_is_fitted_on_train_rows_only_and_reused_for_a_new_cohort(classical_spec, data_root, tmp_path):
    from plugins.datasets.base import get_adapter
    kw = dict(config=str(classical_spec), data_root=str(data_root), rag=False, progress=False,
              modalities=["note"], experts=["tabular"])
    a = tmp_path / "mmist.zarr"
    s = extract_dataset("mmist", store=str(a), **kw)
    assert s.done == {"note/tabular": 618} and s.failed == {"note/tabular": 0}
    g = _group(a, "note", "tabular")
    state = g.attrs["provenance"]["encoding"]
    spec = load_spec(classical_spec)
    ad = get_adapter(spec.dataset("mmist"), data_root)
    split = Store(a).split()
    train = np.flatnonzero(split == SPLIT_CODES["train"])
    assert state["n_train"] == len(train) < 618 and set(split[train]) == {0}
    enc = build_encoder("tabular")
    fields = [inp["fields"] for inp in ad.load("note", list(range(618)))]
    assert state == {**enc.fit([fields[i] for i in train]), "n_train": len(train)}
    assert state != {**enc.fit(fields), "n_train": len(train)}          # all rows would give another encoding
    used = set(state["numeric"]) | set(state["categorical"])
    assert not used & {"case_id", "vital_status_12", "Split"}
    # the encoding is in the expert identity, hence in the config hash
    assert g.attrs["provenance"]["config"]["expert"]["params"]["encoding"] == state

    # a "new cohort" (here: a sample of 100 cases, in a store of their own) encoded with the training cohort's encoding
    clear_caches()
    b = tmp_path / "cohort_b.zarr"
    extract_dataset("mmist", store=str(b), limit=100, encoding_from=str(a), **kw)
    gb = _group(b, "note", "tabular")
    assert gb.attrs["provenance"]["encoding"] == state and gb.attrs["provenance"]["encoding_from"] == str(a)
    rows = [Store(a).ids().index(i) for i in Store(b).ids()]
    np.testing.assert_array_equal(gb.group["vectors"][:], g.group["vectors"][rows])
    # fitted on its own (smaller) training split instead, the same rows get other vectors
    clear_caches()
    c = tmp_path / "cohort_c.zarr"
    extract_dataset("mmist", store=str(c), limit=100, **kw)
    assert not np.array_equal(_group(c, "note", "tabular").group["vectors"][:], g.group["vectors"][rows])


def _second_cohort_from_set_a(data_root, root, first: int, n: int):
    """WIRING TEST ONLY: set-b is not available here, so 'set b' is n records of set-a (from position ``first``),
    written under a temporary data root; it exercises the external-validation path, not its figures."""
    src = data_root / "physionet2012"
    out = root / "physionet2012"
    out.mkdir(parents=True)
    outcomes = pd.read_csv(src / "Outcomes-a.txt", dtype={"RecordID": str})
    members = []
    with tarfile.open(src / "set-a.tar.gz", "r:gz") as tar:
        for m in tar:
            if m.isfile() and m.name.endswith(".txt"):
                members.append((int(m.name.rsplit("/", 1)[-1][:-4]), tar.extractfile(m).read()))
    members = sorted(members)[first:first + n]
    with tarfile.open(out / "set-b.tar.gz", "w:gz") as tar:
        for rid, data in members:
            info = tarfile.TarInfo(f"set-b/{rid}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    outcomes[outcomes["RecordID"].isin({str(r) for r, _ in members})].to_csv(out / "Outcomes-b.txt", index=False)
    return [str(r) for r, _ in members]


def test_external_validation_wiring(classical_spec, data_root, tmp_path, capsys):
    """Train on cohort A, encode cohort B with A's encoding, `train evaluate` the checkpoint on B."""
    from train.__main__ import main as train_main
    from train.experiment import run_experiment
    from train.trainer import Recipe
    a = tmp_path / "a.zarr"
    kw = dict(config=str(classical_spec), rag=False, progress=False)
    extract_dataset("physionet2012", store=str(a), data_root=str(data_root), limit=160, **kw)
    ga = _group(a, "ehr", "stats")
    assert ga.attrs["provenance"]["encoding"]["n_train"] == int((Store(a).split() == 0).sum())
    ids_b = _second_cohort_from_set_a(data_root, tmp_path / "data", 3900, 64)
    b = tmp_path / "b.zarr"
    clear_caches()
    with pytest.raises(ValueError, match="encoding_from"):
        extract_dataset("physionet2012", store=str(tmp_path / "x.zarr"), data_root=str(tmp_path / "data"),
                        options={"set": "b"}, encoding_from=str(tmp_path / "nope.zarr"), **kw)
    clear_caches()
    s = extract_dataset("physionet2012", store=str(b), data_root=str(tmp_path / "data"), options={"set": "b"},
                        encoding_from=str(a), **kw)
    assert s.done == {"ehr/stats": 64, "demographics/tabular": 64}
    assert Store(b).ids() == ids_b and not set(ids_b) & set(Store(a).ids())
    gb = _group(b, "ehr", "stats")
    assert gb.attrs["provenance"]["encoding"] == ga.attrs["provenance"]["encoding"]
    assert (_group(b, "demographics", "tabular").attrs["provenance"]["encoding"]
            == _group(a, "demographics", "tabular").attrs["provenance"]["encoding"])
    # B's vectors are exactly A's encoder applied to B's records
    from plugins.datasets.base import get_adapter
    ad = get_adapter(load_spec(classical_spec).dataset("physionet2012"), tmp_path / "data", {"set": "b"})
    enc = build_encoder("ehr_stats", EncoderOptions(params={"encoding": ga.attrs["provenance"]["encoding"]}))
    np.testing.assert_array_equal(gb.group["vectors"][:], enc.encode([x["events"] for x in ad.load("ehr", list(range(64)))]))
    assert verify(Store(b)) == []
    res = run_experiment(str(a), ["medmix"], [0], ["none"], Recipe(max_epochs=3, warmup_epochs=1, patience=2),
                         tmp_path / "run", tasks=["mortality"])
    assert res["layout"] == {"ehr": ["stats"], "demographics": ["tabular"]}
    capsys.readouterr()
    assert train_main(["evaluate", "--checkpoint", str(tmp_path / "run" / "checkpoints" / "medmix.pt"),
                       "--dataset", "physionet2012", "--store", str(b)]) == 0
    assert "auroc" in capsys.readouterr().out


def test_both_experts_cache_and_resume(classical_spec, data_root, tmp_path):
    path = tmp_path / "p.zarr"
    kw = dict(config=str(classical_spec), data_root=str(data_root), store=str(path), limit=96, rag=False,
              progress=False)
    first = extract_dataset("physionet2012", **kw)
    assert first.done == {"ehr/stats": 96, "demographics/tabular": 96}
    g = Store(path, mode="a").expert_group("ehr", "stats")
    before = (g.group["vectors"][:], g.group["valid"][:])
    assert (before[1] == OK).all()
    clear_caches()
    again = extract_dataset("physionet2012", **kw)                 # same train rows -> same encoding -> cached
    assert again.done == {} and again.skipped_units == {"ehr/stats": 3, "demographics/tabular": 3}
    g.group["done"][1] = 0                                        # as if killed before unit 1's marker
    g.group["vectors"][32:64] = 0
    clear_caches()
    resumed = extract_dataset("physionet2012", **kw)
    assert resumed.done == {"ehr/stats": 32} and resumed.skipped_units == {"ehr/stats": 2, "demographics/tabular": 3}
    np.testing.assert_array_equal(_group(path, "ehr", "stats").group["vectors"][:], before[0])
    assert len(Store(path).versions("ehr", "stats")) == 1
    # tabular, the same way
    mk = dict(config=str(classical_spec), data_root=str(data_root), store=str(tmp_path / "m.zarr"), rag=False,
              progress=False, modalities=["note"], experts=["tabular"])
    extract_dataset("mmist", **mk)
    clear_caches()
    assert extract_dataset("mmist", **mk).skipped_units == {"note/tabular": 20}


def test_classical_role_is_valid_in_the_spec(spec_writer):
    spec = load_spec()
    assert spec.experts_for("physionet2012", "ehr", "offline")["stats"].role == "classical"
    assert spec.experts_for("physionet2012", "ehr", "paper")["stats"].model == "ehr_stats"
    assert spec.experts_for("mmist", "note", "offline")["tabular"].role == "classical"
    bad = spec_writer(lambda raw: raw["profiles"]["offline"]["kinds"]["ehr"]["experts"]["stats"].update(role="classic"))
    with pytest.raises(SpecError, match="role"):
        load_spec(bad)


def test_mimic_events_view_agrees_with_its_series_and_feeds_the_stats_expert(mimic_root):
    from plugins.datasets.base import get_adapter
    a = get_adapter(load_spec().dataset("mimic4mm"), mimic_root)
    ehr = a.load("ehr", [0, 1])
    for rec in ehr:
        ev = rec["events"]
        assert list(ev["variables"]) == list(a.variables) and ev["window_hours"] == 48
        for j, name in enumerate(a.variables):              # hourly means of the events == the series view
            t, v = ev["variables"][name]
            assert ((t >= 0) & (t < 48)).all()
            for h in range(48):
                obs = v[(t >= h) & (t < h + 1)]
                got = rec["series"][h, j]
                assert (np.isnan(got) and obs.size == 0) or got == pytest.approx(obs.mean())
    assert 120 not in ehr[1]["events"]["variables"]["HR"][1]   # charted after 48 h
    state = build_encoder("ehr_stats").fit([r["events"] for r in ehr])
    enc = build_encoder("ehr_stats", EncoderOptions(params={"encoding": state}))
    v = enc.encode([r["events"] for r in ehr])
    assert v.shape == (2, enc.dim) and np.isfinite(v).all()
    assert state["static"]["numeric"].keys() == {"Age"} and state["static"]["categorical"].keys() == {"Gender"}
