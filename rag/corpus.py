"""MedlinePlus corpus adapters: the parsed health-topic JSON, and the official XML dump (mplus_topics_*.xml).

Each passage keeps its topic id, title and url. Synonyms ("also called") are kept apart: they are the queries of
the retrieval benchmark (``python -m rag eval``), never indexed.
"""
from __future__ import annotations

import ast
import hashlib
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from stores.errors import InputError


@dataclass
class Topic:
    id: str
    title: str
    url: str
    text: str
    synonyms: list[str] = field(default_factory=list)
    mesh: list[str] = field(default_factory=list)        # MeSH headings: the answers of the clinical benchmark


@dataclass
class Passage:
    pid: int
    topic_id: str
    title: str
    url: str
    text: str

    def as_document(self) -> str:
        return f"{self.title}. {self.text}"


def _listish(value) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, str) and value.startswith("["):
        try:
            return [str(v) for v in ast.literal_eval(value)]
        except (ValueError, SyntaxError):
            return []
    return [value] if value else []


def load_topics(path: str | Path) -> list[Topic]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: MedlinePlus corpus not found")
    if path.suffix == ".xml":
        return _load_xml(path)
    data = json.loads(path.read_text())
    topics = []
    for i, t in enumerate(data):
        if not t.get("content") or not t.get("title"):
            raise InputError(f"{path}: topic #{i} ({t.get('id')}) lacks title or content")
        if t.get("language", "English") != "English":
            continue
        topics.append(Topic(str(t["id"]), t["title"], t.get("url", ""), t["content"], _listish(t.get("synonyms")),
                            _listish(t.get("mesh_terms"))))
    return topics


def _strip_html(s: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", s)).strip()


def _load_xml(path: Path) -> list[Topic]:
    """The official dump: <health-topics><health-topic id= title= url= language=> <also-called>, <full-summary>,
    <mesh-heading><descriptor>."""
    root = ET.parse(path).getroot()
    topics = []
    for el in root.iter("health-topic"):
        if el.get("language", "English") != "English":
            continue
        summary = el.findtext("full-summary") or ""
        topics.append(Topic(el.get("id", ""), el.get("title", ""), el.get("url", ""), _strip_html(summary),
                            [a.text.strip() for a in el.findall("also-called") if a.text],
                            [d.text.strip() for d in el.findall("mesh-heading/descriptor") if d.text]))
    if not topics:
        raise InputError(f"{path}: no English <health-topic> elements")
    return topics


def to_passages(topics: list[Topic], passage_words: int = 0) -> list[Passage]:
    """One passage per topic, or windows of ``passage_words`` words (each passage keeps its topic)."""
    out = []
    for t in topics:
        words = t.text.split()
        if passage_words <= 0 or len(words) <= passage_words:
            chunks = [t.text]
        else:
            chunks = [" ".join(words[s:s + passage_words]) for s in range(0, len(words), passage_words)]
        for c in chunks:
            out.append(Passage(len(out), t.id, t.title, t.url, c))
    return out


def corpus_hash(passages: list[Passage]) -> str:
    h = hashlib.sha256()
    for p in passages:
        h.update(json.dumps(asdict(p), sort_keys=True).encode())
    return h.hexdigest()
