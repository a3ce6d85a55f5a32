"""The demo corpus that ships with embedmigrate: a WordNet sample with labelled queries.

    docs, queries = load_wordnet_sample()
    docs[0]     -> {"id": "12287836n", "text": "Old World hop hornbeam, Ostrya carpinifolia: medium-sized ..."}
    queries[0]  -> {"doc_id": "00789156v", "text": "Let's investigate the syntax of Chinese"}

3,000 glossary entries ("lemma1, lemma2: definition", one WordNet synset
each) and 600 example sentences; every query's relevant document
(``doc_id``) is among the 3,000. Licence: WordNet 3.0, in
``embedmigrate/data/WORDNET_LICENSE`` (it must travel with the data).

``build_wordnet_sample`` is how the files were made, from the team's
50,000-document WordNet benchmark set, so the sample can be rebuilt.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"
DOCS_FILE = "wordnet_sample.jsonl"
QUERIES_FILE = "wordnet_queries.jsonl"
LICENSE_FILE = "WORDNET_LICENSE"


def load_wordnet_sample() -> tuple[list[dict], list[dict]]:
    """``(docs, queries)``: docs are ``{"id", "text"}``, queries ``{"doc_id", "text"}``."""
    return _read_jsonl(DATA_DIR / DOCS_FILE), _read_jsonl(DATA_DIR / QUERIES_FILE)


def wordnet_sample_paths() -> dict[str, Path]:
    """Where the shipped files are (e.g. to pass the docs file to ``read_texts``)."""
    return {"docs": DATA_DIR / DOCS_FILE, "queries": DATA_DIR / QUERIES_FILE,
            "license": DATA_DIR / LICENSE_FILE}


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def build_wordnet_sample(source_dir, out_dir=DATA_DIR, n_docs: int = 3000, n_queries: int = 600,
                         seed: int = 0) -> tuple[int, int]:
    """Write the demo sample from ``source_dir``/docs.jsonl and queries.jsonl.

    Draws ``n_queries`` queries, keeps every document one of them points at,
    then fills up to ``n_docs`` with other documents drawn at random, so the
    corpus also holds distractors. Documents keep their source order (already
    shuffled), so relevant ones are spread through the file.
    """
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    docs = _read_jsonl(source_dir / "docs.jsonl")
    queries = _read_jsonl(source_dir / "queries.jsonl")
    # a few ids occur twice in the source (adverb offsets labelled as adjectives):
    # their labels are ambiguous, so neither those documents nor their queries ship
    counts: dict[str, int] = {}
    for d in docs:
        counts[d["id"]] = counts.get(d["id"], 0) + 1
    docs = [d for d in docs if counts[d["id"]] == 1]
    queries = [q for q in queries if counts.get(q["doc_id"]) == 1]
    rng = np.random.default_rng(seed)

    picked_queries = sorted(rng.choice(len(queries), size=n_queries, replace=False).tolist())
    queries = [queries[i] for i in picked_queries]
    relevant = {q["doc_id"] for q in queries}
    others = [i for i, d in enumerate(docs) if d["id"] not in relevant]
    fill = rng.choice(len(others), size=n_docs - len(relevant), replace=False)
    keep = {others[i] for i in fill.tolist()}
    docs = [d for i, d in enumerate(docs) if d["id"] in relevant or i in keep]

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows, keys in ((DOCS_FILE, docs, ("id", "text")), (QUERIES_FILE, queries, ("doc_id", "text"))):
        with open(out_dir / name, "w", encoding="utf-8") as handle:
            for row in rows:
                # strip: a few source glosses end in a stray space
                record = {k: row[k].strip() for k in keys}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(docs), len(queries)
