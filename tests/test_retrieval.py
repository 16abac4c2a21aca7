"""Retrieval quality machinery: the short-query benchmark, sentence fusion, the held-out topic split, domain
adaptation through the registry, per-use defaults, and an index that survives a killed build or a truncated file."""
import json
import os

import numpy as np
import pytest

from plugins.registry import EncoderOptions, build_encoder, load_all
from rag.adapted import PROVENANCE, resolve_encoder, split_topics
from rag.corpus import load_topics, to_passages
from rag.fusion import fuse_pieces, fused_search, query_pieces, rrf, split_sentences
from rag.index import CorruptIndex, load_index, open_index

REPORTS = (
    "uid,MeSH,Problems,image,indication,comparison,findings,impression\n"
    '1,Pneumonia/lower lobe/right;Opacity,x,x,Fever.,x,"Right lower lobe XXXX consolidation.",'
    '"1. Right lower lobe pneumonia. 2. No pleural effusion."\n'
    "2,Pneumonia,x,x,x,x,Clear lungs.,No acute cardiopulmonary abnormality.\n"                  # normal: dropped
    '3,Pulmonary Atelectasis/base,x,x,x,x,,"Chest. Basilar atelectasis. Recommend followup radiograph."\n'
    "4,normal,normal,x,x,x,Clear.,Normal chest.\n"                                               # no MeSH topic
    '5,Pneumothorax,x,x,x,x,,"Heart size normal. Lungs are clear."\n'                            # normal: dropped
    "6,Pneumonia,x,x,x,x,,\n")                                                                   # empty: dropped


@pytest.fixture(scope="module")
def tiny_text_dir(tiny_bert_dir, tmp_path_factory):
    """The tiny BERT with a tokenizer that knows its vocabulary: the shared fixture's tokenizer.json carries only the
    5 special tokens (every word is [UNK]), so nothing could be learnt from text through it."""
    import shutil
    folder = tmp_path_factory.mktemp("tiny_text") / "bert"
    shutil.copytree(tiny_bert_dir, folder)
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["model"]["vocab"] = {w: i for i, w in enumerate((folder / "vocab.txt").read_text().split())}
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    return folder


@pytest.fixture(scope="module")
def topics(data_root):
    return load_topics(data_root / "medlineplus" / "health_topics.json")


def test_short_query_benchmark_keeps_abnormal_impression_sentences(tmp_path, topics):
    from rag.evaluate import impression_queries, openi_queries
    path = tmp_path / "reports.csv"
    path.write_text(REPORTS)
    q, a = impression_queries(topics, path)
    title = {t.id: t.title for t in topics}
    assert q == ["Right lower lobe pneumonia.", "Basilar atelectasis."]
    assert [sorted(title[t] for t in ans) for ans in a] == [["Pneumonia"], ["Collapsed Lung"]]
    long_q, _ = openi_queries(topics, path)                     # the report benchmark keeps findings + impression
    assert long_q[0].startswith("Right lower lobe consolidation. 1. Right lower lobe pneumonia.")
    assert impression_queries(topics, path, max_words=2)[0] == ["Basilar atelectasis."]


def test_sentence_split_and_rank_fusion():
    assert split_sentences("1. Cardiomegaly. 2. Small left effusion; no pneumothorax. / .") == [
        "Cardiomegaly.", "Small left effusion;", "no pneumothorax."]                 # "/ ." has no word
    best, scores = rrf([[3, 1, 2], [1, 3, -1]], [1.0, 0.5], rrf_k=60, k=2)
    assert best == [3, 1] and scores[0] == pytest.approx(1 / 61 + 0.5 / 62)
    pieces, owner = query_pieces(["fever. cough and cold.", "pain"], True)
    assert pieces == ["fever. cough and cold.", "fever.", "cough and cold.", "pain"] and owner == [0, 0, 0, 1]
    ids = np.array([[5, 6, 7], [9, 9, 9], [7, 8, 5], [1, 2, 3]])
    ids[1] = [7, 5, -1]
    fused, fscores = fuse_pieces(ids, owner, 2, 3)    # 7: 1/63 + 2/61 beats 5: 1/61 + 1/62 + 1/63; 6 ties 8: lower id
    assert fscores[0][0] == pytest.approx(1 / 63 + 2 / 61)
    assert fused[0].tolist() == [7, 5, 6] and fused[1].tolist() == [1, 2, 3]      # a single piece keeps its order


def test_topic_split_is_disjoint_stable_and_pairs_come_from_training_topics(topics):
    from rag.adapt import Recipe, training_pairs
    ids = [t.id for t in topics]
    train, held = split_topics(ids)
    assert not train & held and train | held == set(ids) and 0.2 < len(held) / len(ids) < 0.4
    assert split_topics(ids + ["new-topic"])[1] - {"new-topic"} == held             # adding a topic moves no other
    pairs = training_pairs(topics, to_passages(topics, 120), train, Recipe())
    assert pairs and {p.topic_id for p in pairs} <= train
    kinds = {p.kind for p in pairs}
    assert kinds == {"title", "synonym", "mesh", "sentence"}
    assert all(p.query not in p.passage for p in pairs if p.kind == "sentence")    # never its own passage verbatim


@pytest.mark.slow
def test_adaptation_lowers_the_loss_and_loads_through_the_registry(tmp_path, topics, tiny_text_dir):
    from rag.adapt import Recipe, adapt_encoder
    small = topics[:30]
    passages = to_passages(small, 40)
    enc = build_encoder("minilm", EncoderOptions(source=str(tiny_text_dir))).load()
    before = enc.encode(["heart failure"])
    recipe = Recipe(epochs=4, batch_size=8, lr=1e-3, query_tokens=16, passage_tokens=48, warmup=0.0)
    out = tmp_path / "cache" / "adapted" / "tiny_adapted"
    prov = adapt_encoder(enc, small, passages, out, recipe, progress=False)
    assert prov["probe_loss_after"] < prov["probe_loss_before"]
    assert set(prov["heldout_topics"]) == split_topics([t.id for t in small])[1]
    saved = json.loads((out / PROVENANCE).read_text())
    assert saved["base_model"] == "minilm" and saved["data_hash"] == prov["data_hash"] and saved["weights_hash"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]          # temp folder renamed away
    base, options = resolve_encoder("tiny_adapted", EncoderOptions(), tmp_path / "cache", load_all())
    assert base == "minilm" and options.source == str(out.resolve())
    loaded = build_encoder(base, options).load()
    np.testing.assert_allclose(loaded.encode(["heart failure"]), enc.encode(["heart failure"]), atol=1e-5)
    assert not np.allclose(loaded.encode(["heart failure"]), before)
    assert loaded.identity()["params"]["adapted"] == saved["weights_hash"]           # other weights: stale index
    with pytest.raises(KeyError, match="rag adapt"):
        resolve_encoder("nothing_here", EncoderOptions(), tmp_path / "cache", load_all())


def test_adapted_encoder_named_in_a_profile_and_search_defaults(spec_writer, tiny_text_dir, tiny_qwen_dir, tmp_path,
                                                                data_root, topics):
    """A profile names the adapted folder under its own key; `rag search` uses `rag.search` over the expert's."""
    from rag.adapt import Recipe, adapt_encoder
    from rag.service import RagService, search_config
    from stores.spec import load_spec
    out = tmp_path / "adapted"
    adapt_encoder(build_encoder("minilm", EncoderOptions(source=str(tiny_text_dir))).load(), topics[:20],
                  to_passages(topics[:20], 40), out, Recipe(epochs=1, batch_size=8, query_tokens=16,
                                                             passage_tokens=48), progress=False)

    def edit(raw):
        prof = raw["profiles"]["offline"]
        prof["models"] = {"mini_adapted": {"source": str(out)}, "qwen2_0_5b": {"source": str(tiny_qwen_dir)}}
        prof["rag"] = {"query_encoder": "mini_adapted", "article_encoder": "mini_adapted", "lm": "qwen2_0_5b",
                       "strategy": "hybrid", "bm25_weight": 0.25, "sentence_fusion": True,
                       "search": {"strategy": "dense"}}
    spec = load_spec(str(spec_writer(edit)))
    cfg = spec.profile("offline").rag
    assert search_config(cfg).strategy == "dense" and search_config(cfg).sentence_fusion is True
    svc = RagService(spec, "offline", str(data_root), index_dir=str(tmp_path / "index"))
    assert svc.query_encoder.adapted["base_model"] == "minilm"
    assert svc.heldout_topics("mini_adapted") == set(json.loads((out / PROVENANCE).read_text())["heldout_topics"])


def _xml_index(tmp_path, tiny_bert_dir):
    from test_rag import XML
    enc = build_encoder("medcpt_article", EncoderOptions(source=str(tiny_bert_dir))).load()
    path = tmp_path / "c.xml"
    path.write_text(XML)
    return enc, to_passages(load_topics(path))


@pytest.mark.parametrize("damage", ["truncate index.faiss", "truncate meta.json", "delete vectors.npy",
                                    "delete meta.json"])
def test_a_partial_or_corrupt_index_is_detected_and_rebuilt(tmp_path, tiny_bert_dir, damage):
    enc, passages = _xml_index(tmp_path, tiny_bert_dir)
    folder = tmp_path / "index"
    good = open_index(folder, passages, enc)
    how, name = damage.split(" ")
    f = folder / name
    if how == "truncate":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    else:
        f.unlink()
    if name != "meta.json":
        with pytest.raises(CorruptIndex, match=name.split(".")[0]):
            load_index(folder)
    again = open_index(folder, passages, enc)                                       # rebuilt, not a crash
    assert again.meta["config_hash"] == good.meta["config_hash"] and again.index.ntotal == len(passages)
    assert load_index(folder).index.ntotal == len(passages)
    q = enc.encode(["kidney cancer"])
    np.testing.assert_array_equal(fused_search(again, enc.encode, ["kidney cancer"], 2, "dense")[0],
                                  good.search(["kidney cancer"], q, 2, "dense")[0])


def test_a_killed_build_leaves_the_saved_index_intact(tmp_path, tiny_bert_dir, monkeypatch):
    enc, passages = _xml_index(tmp_path, tiny_bert_dir)
    folder = tmp_path / "index"
    open_index(folder, passages, enc)
    before = {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()}

    def killed(items):
        raise KeyboardInterrupt("killed mid-build")
    monkeypatch.setattr(enc, "encode", killed)
    with pytest.raises(KeyboardInterrupt):
        open_index(folder, passages, enc, rebuild=True)
    assert {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()} == before
    assert load_index(folder).index.ntotal == len(passages)
    assert os.listdir(tmp_path).count("index") == 1


@pytest.mark.slow
def test_rag_eval_prints_one_table_over_encoders_and_variants(spec_writer, tiny_text_dir, tiny_qwen_dir, tmp_path,
                                                               data_root, capsys, monkeypatch):
    """`rag eval` end to end on the real corpus and reports with a tiny encoder: one row per variant, all and
    held-out queries, each benchmark's recall@1/@5 and MRR side by side."""
    from rag.__main__ import main

    def edit(raw):
        prof = raw["profiles"]["offline"]
        prof["models"] = {"minilm": {"source": str(tiny_text_dir)}, "qwen2_0_5b": {"source": str(tiny_qwen_dir)}}
        prof["rag"] = {"query_encoder": "minilm", "article_encoder": "minilm", "lm": "qwen2_0_5b",
                       "passage_words": 400}
    out = tmp_path / "table.json"
    monkeypatch.setenv("MEDMIX_MODEL_CACHE", str(tmp_path / "models"))             # the index is built under it
    assert main(["--config", str(spec_writer(edit)), "--data-root", str(data_root), "eval", "--encoders", "minilm",
                 "--benchmark", "impressions", "--benchmark", "synonyms", "--variant", "dense",
                 "--variant", "hybrid:0.25+sent", "--out", str(out)]) == 0
    assert len(list((tmp_path / "rag").glob("minilm-*/index.faiss"))) == 1
    rows = json.loads(out.read_text())
    assert [(r["queries"], r["variant"]) for r in rows] == [
        ("all", "dense"), ("all", "hybrid:0.25+sent"), ("held-out topics", "dense"), ("held-out topics", "hybrid:0.25+sent")]
    assert rows[0]["syn n"] == 901 and 500 < rows[0]["imp n"] < 700 and rows[2]["syn n"] < 901
    assert all(0 <= r[f"{b} {m}"] <= 1 for r in rows for b in ("syn", "imp") for m in ("R@1", "R@5", "mrr"))
    assert all(r["syn R@1"] <= r["syn R@5"] for r in rows)
    assert "imp R@5" in capsys.readouterr().out


@pytest.mark.slow
def test_a_missing_adapted_encoder_is_adapted_once_on_first_use(spec_writer, tiny_text_dir, tiny_qwen_dir, tmp_path,
                                                                data_root, monkeypatch):
    """A profile naming `minilm_adapted` on a fresh cache trains it once (default recipe) and then reuses it."""
    from rag.adapted import read_provenance
    from rag.service import RagService
    from stores.spec import load_spec
    monkeypatch.setenv("MEDMIX_MODEL_CACHE", str(tmp_path / "models"))

    def edit(raw):
        prof = raw["profiles"]["offline"]
        prof["models"] = {"minilm": {"source": str(tiny_text_dir)}, "qwen2_0_5b": {"source": str(tiny_qwen_dir)}}
        prof["rag"] = {"query_encoder": "minilm_adapted", "article_encoder": "minilm_adapted", "lm": "qwen2_0_5b",
                       "passage_words": 400}
    spec = load_spec(str(spec_writer(edit)))
    svc = RagService(spec, "offline", str(data_root))
    first = svc.query_encoder
    folder = tmp_path / "models" / "adapted" / "minilm_adapted"
    prov = read_provenance(folder)
    assert first.adapted == prov and prov["n_pairs"] == 2000 and prov["recipe"]["passage_tokens"] == 62
    stamp = (folder / PROVENANCE).stat().st_mtime_ns
    again = RagService(spec, "offline", str(data_root)).query_encoder                 # reused, not retrained
    assert (folder / PROVENANCE).stat().st_mtime_ns == stamp and again.adapted["weights_hash"] == prov["weights_hash"]
