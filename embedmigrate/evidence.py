"""Evidence for the quality gate: is search better after the migration than today?

Agreement with one model (overlaps, recall retained against the new model,
cycle error, the new model judging itself) favours a translation that makes
search worse, so the gate's PASS needs *evidence* instead, strongest first:

    labels     BEIR-style labelled queries (queries.jsonl + qrels.tsv, several
               graded relevant points per query), or the older queries file
               whose lines carry one ``doc_id``;
    siblings   no labels, but a group field (``source``, ``doc_id``, ``url``,
               ``article`` ...): a stored point is the query and the other
               points of its group are its relevant set;
    none       structural checks only: the verdict is at most WARN.

Every road is measured on the same evaluation set with nDCG@k per query:

    today      old-space queries on the old vectors (what users get now)
    translate  new-model queries on translated vectors
    reembed    new-model queries on new-model encodings of the stored texts
    bridge     new-model queries mapped back (inverse) onto the old vectors
    hybrid_P   translated vectors with P% of the documents re-embedded

and compared with a paired bootstrap confidence interval over queries.
"""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import metrics as M
from .errors import DataError, NotFoundError, UsageError

LABELS, SIBLINGS, NONE = "labels", "siblings", "none"
MAX_QUERIES = 1000
GROUP_NAME_HINTS = ("source", "doc_id", "document_id", "parent_id", "url", "path", "file",
                    "filename", "title", "article", "article_id", "doc", "page", "group")


# --- labelled queries ------------------------------------------------------------------

@dataclass
class LabelledQueries:
    """Query texts and graded relevance: ``qrels[query_id] = {corpus_id: grade}``."""
    ids: list[str]
    texts: list[str]
    qrels: dict[str, dict[str, float]]
    source: str  # "beir" | "doc_id"

    @property
    def corpus_ids(self) -> list[str]:
        return sorted({c for rel in self.qrels.values() for c, g in rel.items() if g > 0})


def read_labelled_queries(queries_path, qrels_path=None) -> LabelledQueries:
    """BEIR layout (``{"_id", "text"}`` lines + a qrels TSV with a header
    ``query-id  corpus-id  score``) or one ``doc_id`` per query line."""
    records = _read_query_lines(queries_path)
    if qrels_path:
        missing = [n for n, r in enumerate(records, 1) if "_id" not in r]
        if missing:
            raise UsageError(f"{queries_path}: line {missing[0]} has no \"_id\" (BEIR queries need "
                             "one per line)", "write each query as {\"_id\": ..., \"text\": ...}")
        ids = [str(r["_id"]) for r in records]
        qrels = read_qrels(qrels_path)
        known = set(ids)
        unknown = sorted(set(qrels) - known)
        if unknown and len(unknown) == len(qrels):
            raise UsageError(f"{qrels_path}: none of its query-ids is in {queries_path} "
                             f"(e.g. '{unknown[0]}')", "use the queries' \"_id\" values as query-id")
        keep = [i for i, q in enumerate(ids) if any(g > 0 for g in qrels.get(q, {}).values())]
        if not keep:
            raise DataError(f"{qrels_path}: no query of {queries_path} has a relevant point "
                            "(score > 0)", "judge at least one point relevant for some queries")
        return LabelledQueries([ids[i] for i in keep], [records[i]["text"] for i in keep],
                               {ids[i]: qrels[ids[i]] for i in keep}, "beir")
    if records and all("doc_id" in r for r in records):
        ids = [str(r.get("_id", n)) for n, r in enumerate(records)]
        return LabelledQueries(ids, [r["text"] for r in records],
                               {q: {str(r["doc_id"]): 1.0} for q, r in zip(ids, records)}, "doc_id")
    raise UsageError(f"{queries_path}: queries carry no relevance labels",
                     "give --qrels qrels.tsv (BEIR: query-id, corpus-id, score) or a \"doc_id\" "
                     "on every query line")


def _read_query_lines(path) -> list[dict]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise NotFoundError(f"cannot read queries {path}: {e.strerror or e}",
                            "pass an existing .jsonl file to --queries") from None
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except ValueError:
            raise UsageError(f"{path}: line {n} is not JSON", "write one JSON object per line") from None
        if not isinstance(r, dict) or not isinstance(r.get("text"), str) or not r["text"].strip():
            raise UsageError(f"{path}: line {n} has no \"text\"", "give every query a non-empty \"text\"")
        records.append(r)
    if not records:
        raise DataError(f"{path} holds no queries", "add one JSON query per line")
    return records


def read_qrels(path) -> dict[str, dict[str, float]]:
    """A BEIR qrels TSV: header ``query-id  corpus-id  score``, one judgement per line."""
    path = Path(path)
    try:
        handle = open(path, encoding="utf-8", newline="")
    except OSError as e:
        raise NotFoundError(f"cannot read qrels {path}: {e.strerror or e}",
                            "pass an existing qrels .tsv to --qrels") from None
    with handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    header = [h.strip().lower() for h in (rows[0] if rows else [])]
    for column in ("query-id", "corpus-id", "score"):
        if column not in header:
            raise UsageError(f"{path}: the header has no '{column}' column (found: "
                             f"{', '.join(header) or 'nothing'})",
                             "start the file with the tab-separated header: query-id corpus-id score")
    qi, ci, si = (header.index(c) for c in ("query-id", "corpus-id", "score"))
    qrels: dict[str, dict[str, float]] = {}
    for n, row in enumerate(rows[1:], 2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(qi, ci, si):
            raise UsageError(f"{path}: line {n} has {len(row)} columns, the header {len(header)}",
                             "separate query-id, corpus-id and score with tabs on every line")
        try:
            score = float(row[si])
        except ValueError:
            raise UsageError(f"{path}: line {n} score {row[si]!r} is not a number",
                             "write a relevance grade (0, 1, 2 ...) in the score column") from None
        qrels.setdefault(row[qi].strip(), {})[row[ci].strip()] = score
    if not qrels:
        raise DataError(f"{path} holds no judgements", "add query-id, corpus-id, score lines")
    return qrels


# --- proposing a group field -------------------------------------------------------------

def group_statistics(payloads: list[dict], name: str) -> dict:
    values = [_group_value(p, name) for p in payloads]
    present = [v for v in values if v is not None]
    counts = Counter(present)
    sizes = sorted(counts.values())
    shared = sum(c for c in sizes if c >= 2)
    return {"points": len(values), "with_value": len(present), "groups": len(counts),
            "groups_of_2_or_more": sum(1 for c in sizes if c >= 2),
            "share_with_sibling": round(shared / max(len(values), 1), 3),
            "median_group": float(np.median(sizes)) if sizes else 0.0,
            "largest_group": sizes[-1] if sizes else 0}


def propose_group_field(payloads: list[dict], fields: list[str],
                        exclude: tuple = ()) -> tuple[str, dict] | None:
    """A payload field that looks like a grouping of points by source document:
    values repeat (many points share one with another point), most groups are
    small, and it is no category (few values covering everything). Returns the
    best candidate and its statistics on this sample, or None."""
    best = None
    for name in fields:
        if name in exclude:
            continue
        stats = group_statistics(payloads, name)
        n = max(stats["points"], 1)
        if (stats["groups_of_2_or_more"] < 2 or stats["share_with_sibling"] < 0.05
                or stats["groups"] < max(5, 0.02 * n) or stats["largest_group"] > 0.2 * n):
            continue
        score = stats["share_with_sibling"] + (0.5 if name.lower() in GROUP_NAME_HINTS else 0.0)
        if best is None or score > best[0]:
            best = (score, name, stats)
    return (best[1], best[2]) if best else None


def _group_value(payload, name: str):
    value = payload.get(name) if isinstance(payload, dict) else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (str, int, float)):
        return value if not (isinstance(value, str) and not value.strip()) else None
    return None


# --- the evaluation set ------------------------------------------------------------------

@dataclass
class EvalSet:
    """Documents searched and queries with graded relevant documents (by index)."""
    kind: str                      # LABELS | SIBLINGS
    doc_ids: list
    docs_old: np.ndarray           # stored (old-model) vectors of the documents
    doc_texts: list                # stored text per document (None where absent)
    query_texts: list              # labels: query texts; siblings: the point's text or None
    relevant: list[dict[int, float]]
    query_doc: np.ndarray | None = None  # siblings: the query point's own document index
    description: str = ""
    stats: dict = field(default_factory=dict)

    @property
    def n_queries(self) -> int:
        return len(self.relevant)


def labelled_eval_set(src, labelled: LabelledQueries, distractors, text_field: str = "") -> EvalSet:
    """The relevant points named by the labels, fetched by id, plus a random
    sample of the collection as distractors."""
    info = src.describe()
    wanted = labelled.corpus_ids
    fetched = src.fetch([_as_id(i, info.id_type) for i in wanted])
    have = {str(i) for i in fetched.ids}
    missing = [i for i in wanted if i not in have]
    if missing:
        raise DataError(f"the labels name {len(missing)} corpus-id(s) that are not in the collection "
                        f"(e.g. '{missing[0]}')",
                        "corpus-id must be a point id of the source collection; fix the qrels/doc_id")
    ids, vectors, texts = _union(fetched, distractors, text_field)
    pos = {str(i): k for k, i in enumerate(ids)}
    relevant = [{pos[c]: g for c, g in labelled.qrels[q].items() if g > 0 and c in pos}
                for q in labelled.ids]
    return EvalSet(LABELS, ids, vectors, texts, list(labelled.texts), relevant,
                   description=f"{len(relevant)} labelled queries ({labelled.source}) over "
                               f"{len(ids)} points ({len(fetched)} judged relevant, the rest a "
                               "random sample)",
                   stats={"queries": len(relevant), "documents": len(ids), "judged": len(fetched)})


def sibling_eval_set(src, group_field: str, sample, text_field: str = "", *,
                     batch_size: int = 1024, max_points: int = 20000, seed: int = 0,
                     progress=None) -> EvalSet:
    """Whole groups, not points: the groups of a random sample of points are read
    in full (a random sample of a large collection rarely holds two siblings),
    the sample stays as distractors, and each point with a sibling there is a query."""
    chosen = []
    seen = set()
    for p in sample.payloads:
        v = _group_value(p, group_field)
        if v is not None and v not in seen:
            seen.add(v)
            chosen.append(v)
    if not chosen:
        raise DataError(f"no sampled point has a value in the group field '{group_field}'",
                        "pass --group-field with a payload field that names each point's source "
                        "document, or leave it out")
    members = _read_groups(src, group_field, set(chosen), batch_size, max_points, progress)
    ids, vectors, texts = _union(members, sample, text_field)
    payload_of = {str(i): p for i, p in zip(members.ids, members.payloads)}
    payload_of.update({str(i): p for i, p in zip(sample.ids, sample.payloads)
                       if str(i) not in payload_of})
    groups: dict = {}
    for k, i in enumerate(ids):
        v = _group_value(payload_of.get(str(i)), group_field)
        if v is not None:
            groups.setdefault(v, []).append(k)
    queries = [k for g in groups.values() if len(g) >= 2 for k in g]
    if not queries:
        raise DataError(f"the group field '{group_field}' has no group of 2 or more points",
                        "choose a field whose values repeat (the source document of each chunk), "
                        "or give labelled queries instead")
    rng = np.random.default_rng(seed)
    if len(queries) > MAX_QUERIES:
        queries = sorted(rng.choice(queries, size=MAX_QUERIES, replace=False).tolist())
    group_of = {k: v for v, g in groups.items() for k in g}
    relevant = [{j: 1.0 for j in groups[group_of[q]] if j != q} for q in queries]
    n_groups = len({group_of[q] for q in queries})
    return EvalSet(SIBLINGS, ids, vectors, texts, [texts[q] for q in queries], relevant,
                   query_doc=np.asarray(queries, dtype=np.int64),
                   description=f"{len(queries)} stored points as queries, their siblings (same "
                               f"'{group_field}') relevant; {n_groups} groups over {len(ids)} points",
                   stats={"queries": len(queries), "documents": len(ids), "groups": n_groups,
                          "group_field": group_field})


def _read_groups(src, group_field, values: set, batch_size, max_points, progress):
    from .connectors import Batch
    ids, vecs, payloads, docs = [], [], [], []
    has_docs = False
    for batch, _ in src.scan(batch_size):
        keep = [k for k, p in enumerate(batch.payloads) if _group_value(p, group_field) in values]
        if keep:
            ids += [batch.ids[k] for k in keep]
            vecs.append(batch.vectors[keep])
            payloads += [batch.payloads[k] for k in keep]
            if batch.documents is not None:
                has_docs = True
                docs += [batch.documents[k] for k in keep]
        if progress is not None:
            progress(len(batch))
        if len(ids) >= max_points:  # memory bound; the groups read so far are complete enough
            break
    dim = src.describe().dim
    return Batch(ids, np.concatenate(vecs) if vecs else np.zeros((0, dim), np.float32), payloads,
                 docs if has_docs else None)


def _union(first, second, text_field: str):
    """Points of two batches, each id once (first wins), with their stored texts."""
    ids, rows, texts = [], [], []
    seen = set()
    for batch in (first, second):
        bt = batch.texts(text_field) if text_field else [None] * len(batch)
        for k, i in enumerate(batch.ids):
            if str(i) in seen:
                continue
            seen.add(str(i))
            ids.append(i)
            rows.append(batch.vectors[k])
            t = bt[k]
            texts.append(t if isinstance(t, str) and t.strip() else None)
    return ids, np.asarray(rows, dtype=np.float32), texts


def _as_id(value: str, id_type: str):
    if id_type == "int":
        try:
            return int(value)
        except ValueError:
            return value
    return value


# --- search quality ---------------------------------------------------------------------

def ndcg_per_query(queries: np.ndarray, docs: np.ndarray, relevant: list[dict[int, float]],
                   k: int = 10, metric: str = "cosine", exclude=None) -> np.ndarray:
    """nDCG@k of each query (linear gain, as trec_eval); ``exclude[i]`` is a
    document index query i may not retrieve (itself, for sibling queries)."""
    extra = 1 if exclude is not None else 0
    hits = M.top_k(queries, docs, k + extra, metric)
    out = np.zeros(len(relevant))
    for i, rel in enumerate(relevant):
        row = [h for h in hits[i] if exclude is None or h != exclude[i]][:k]
        dcg = sum(rel.get(int(h), 0.0) / np.log2(r + 2) for r, h in enumerate(row))
        ideal = sorted(rel.values(), reverse=True)[:k]
        idcg = sum(g / np.log2(r + 2) for r, g in enumerate(ideal))
        out[i] = dcg / idcg if idcg > 0 else 0.0
    return out


def ratio_interval(a: np.ndarray, b: np.ndarray, *, n_boot: int = 2000, level: float = 0.95,
                   seed: int = 0) -> dict:
    """mean(a) / mean(b) with a paired bootstrap interval over queries."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    point = _ratio(a.mean(), b.mean())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    boots = np.array([_ratio(x, y) for x, y in zip(a[idx].mean(axis=1), b[idx].mean(axis=1))])
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"ratio": point, "low": float(lo), "high": float(hi), "level": level}


def mean_interval(a: np.ndarray, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    a = np.asarray(a, float)
    rng = np.random.default_rng(seed)
    boots = a[rng.integers(0, len(a), size=(n_boot, len(a)))].mean(axis=1)
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"mean": float(a.mean()), "low": float(lo), "high": float(hi)}


def _ratio(x: float, y: float) -> float:
    if y > 1e-12:
        return float(x / y)
    return float("inf") if x > 1e-12 else 1.0


# --- the roads ---------------------------------------------------------------------------

HYBRID_SHARES = (25, 50, 75)


@dataclass
class Encoded:
    """What measuring the roads needs, encoded once."""
    queries_new: np.ndarray
    queries_old: np.ndarray | None     # None: today's queries cannot be encoded (no old model)
    docs_new: np.ndarray | None        # None: no stored texts to re-embed
    docs_translated: np.ndarray
    docs_written: np.ndarray | None = None  # verify: what the target really holds
    query_side: str = ""               # how the new-model queries were made
    seconds: dict = field(default_factory=dict)
    native_share: float = 0.0          # share of documents with a text to re-embed


def encode_for_roads(es: EvalSet, translator, new_encoder, old_encoder, cache_dir) -> Encoded:
    """Encode the evaluation set for every road (cached on disk)."""
    from .encoders import encode_cached
    seconds = {}
    start = time.perf_counter()
    docs_translated = translator.translate(es.docs_old)
    seconds["translate_per_doc"] = (time.perf_counter() - start) / max(len(es.docs_old), 1)
    has_text = [k for k, t in enumerate(es.doc_texts) if t is not None]
    docs_new = None
    if has_text:
        texts = [es.doc_texts[k] for k in has_text]
        seconds["encode_per_doc"] = encode_seconds_per_text(new_encoder, texts)
        enc = encode_cached(new_encoder, texts, cache_dir)
        # points without text keep their translation, as a re-embed migration writes them
        docs_new = docs_translated.copy()
        docs_new[has_text] = enc
    if es.kind == LABELS:
        queries_new = encode_cached(new_encoder, es.query_texts, cache_dir, kind="query")
        queries_old = (encode_cached(old_encoder, es.query_texts, cache_dir, kind="query")
                       if old_encoder is not None else None)
        side = "query texts encoded by the new model"
    else:
        queries_new, queries_old, side = _sibling_queries(es, docs_translated, new_encoder,
                                                          old_encoder, cache_dir)
    return Encoded(queries_new, queries_old, docs_new, docs_translated, query_side=side,
                   seconds=seconds, native_share=len(has_text) / max(len(es.doc_ids), 1))


def _sibling_queries(es: EvalSet, docs_translated, new_encoder, old_encoder, cache_dir):
    """A sibling query is its point's text encoded *as a query* by each model, as
    users search (asymmetric models such as e5 encode queries and passages
    differently; with passage vectors as queries, e5 -> MiniLM looked better on
    siblings and was worse on labels: docs/gate.md). Without a text, today's query
    is the stored vector and the migrated one its translation; without the old
    model, today's queries are the stored vectors."""
    from .encoders import encode_cached
    q = es.query_doc
    with_text = [i for i, t in enumerate(es.query_texts) if t is not None]
    texts = [es.query_texts[i] for i in with_text]
    queries_new = docs_translated[q].copy()
    queries_old = es.docs_old[q].copy()
    if texts:
        queries_new[with_text] = encode_cached(new_encoder, texts, cache_dir, kind="query")
        if old_encoder is not None:
            queries_old[with_text] = encode_cached(old_encoder, texts, cache_dir, kind="query")
    n, total = len(texts), len(q)
    side = (f"{n} of {total} query points' texts encoded as queries by the new model"
            + (" and by the old model (today)" if old_encoder is not None and n else
               "; today's queries are the stored vectors" + ("" if old_encoder else " (no old model)"))
            + (f"; {total - n} without text: stored vector today, translation after" if n < total else ""))
    return queries_new, queries_old, side


def encode_seconds_per_text(encoder, texts: list, n: int = 128) -> float:
    """Encoding time per text on this machine, measured on up to ``n`` of these
    texts after a warm-up (the model load is not encoding time; cached encodings
    would say nothing)."""
    probe = texts[:n]
    encoder.encode(probe[:4])
    start = time.perf_counter()
    encoder.encode(probe)
    return (time.perf_counter() - start) / max(len(probe), 1)


def measure_roads(es: EvalSet, enc: Encoded, translator, *, metric: str = "cosine", k: int = 10,
                  seed: int = 0) -> dict:
    """Per-query nDCG@k of every road the data allows."""
    exclude = es.query_doc if es.kind == SIBLINGS else None
    roads: dict[str, np.ndarray] = {}

    def score(q, docs):
        return ndcg_per_query(q, docs, es.relevant, k, metric, exclude)
    if enc.queries_old is not None:
        roads["today"] = score(enc.queries_old, es.docs_old)
    try:
        roads["bridge"] = score(translator.inverse(enc.queries_new), es.docs_old)
    except NotImplementedError:
        pass
    roads["translate"] = score(enc.queries_new, enc.docs_translated)
    if enc.docs_new is not None:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(es.doc_ids))
        for share in HYBRID_SHARES:
            mixed = enc.docs_translated.copy()
            pick = order[: int(round(share / 100 * len(order)))]
            mixed[pick] = enc.docs_new[pick]
            roads[f"hybrid_{share}"] = score(enc.queries_new, mixed)
        roads["reembed"] = score(enc.queries_new, enc.docs_new)
    if enc.docs_written is not None:
        roads["written"] = score(enc.queries_new, enc.docs_written)
    return roads


__all__ = ["LABELS", "SIBLINGS", "NONE", "LabelledQueries", "read_labelled_queries", "read_qrels",
           "propose_group_field", "group_statistics", "EvalSet", "labelled_eval_set",
           "sibling_eval_set", "ndcg_per_query", "ratio_interval", "mean_interval", "Encoded",
           "encode_for_roads", "measure_roads", "HYBRID_SHARES"]


# --- the summary the gate and the report read ---------------------------------------------

UNPROVEN = "unproven: no labelled queries and no group field"
APPLY_VECTORS_PER_S = 3000.0  # write speed assumed for costs; measured per engine in docs/benchmarks.md
GPU_ENCODE_SPEEDUP = 20.0     # an estimate (no GPU measured here), as in the plan's estimate


def no_evidence(reason: str = UNPROVEN) -> dict:
    return {"kind": NONE, "reason": reason,
            "sentence": f"Unproven: {reason.removeprefix('unproven: ')}. Nothing shows that search "
                        "is as good after the migration as today: pass labelled queries "
                        "(--queries/--qrels) or a group field (--group-field)."}


def summarise(es: EvalSet, enc: Encoded, roads: dict, *, baseline: str, migrated: str,
              k: int = 10, seed: int = 0) -> dict:
    """Means with intervals per road, the migrated / baseline ratio and one sentence."""
    per_road = {name: mean_interval(v, seed=seed) for name, v in roads.items()}
    out = {"kind": es.kind, "description": es.description, "query_side": enc.query_side,
           "baseline": baseline, "migrated_road": migrated, "k": k, "n_queries": es.n_queries,
           "roads": per_road, "stats": es.stats}
    ndcg = {"migrated": per_road.get(migrated)}
    if "today" in per_road:
        ndcg["today"] = per_road["today"]
    if "reembed" in per_road:
        ndcg["reembed"] = per_road["reembed"]
    out["ndcg"] = ndcg
    versus = "today" if baseline == "today" else "reembed"
    if versus in roads and migrated in roads:
        out["ratio"] = {"vs": versus, **ratio_interval(roads[migrated], roads[versus], seed=seed)}
    else:
        out["ratio"] = None
        out["reason"] = ("unproven: today's index cannot be searched with the queries (no old "
                         "model)" if versus == "today" else
                         "unproven: no stored texts, so a full re-embed cannot be measured")
    return out


def sentence(summary: dict, verdict: str) -> str:
    """One plain sentence answering 'Is search better after the migration?'."""
    if summary.get("kind", NONE) == NONE or not summary.get("ratio"):
        return summary.get("sentence") or no_evidence(summary.get("reason", UNPROVEN))["sentence"]
    r, k = summary["ratio"], summary.get("k", 10)
    mig = summary["ndcg"]["migrated"]["mean"]
    base = summary["roads"][r["vs"]]["mean"]
    where = f"on {summary['n_queries']} {'labelled queries' if summary['kind'] == LABELS else 'sibling queries'}"
    numbers = (f"nDCG@{k} {base:.3f} {'today' if r['vs'] == 'today' else 'for a full re-embed'} "
               f"vs {mig:.3f} after the migration (ratio {r['ratio']:.2f}, 95% interval "
               f"{r['low']:.2f}-{r['high']:.2f}), {where}")
    if r["vs"] == "reembed":
        return (f"The old model is being retired, so the migration is compared with a full re-embed: "
                f"{numbers}; it keeps {100 * min(r['ratio'], 9.99):.0f}% of that quality.")
    if verdict == "PASS":
        return f"Yes: search is at least as good after the migration: {numbers}."
    if r["high"] < 1.0:
        return f"No: search gets worse after the migration: {numbers}."
    return f"Not shown: the evidence cannot tell whether search gets better: {numbers}."


def decide(summary: dict, enc: Encoded | None, *, count: int, baseline: str = "today",
           strategy_costs: dict | None = None) -> dict:
    """One row per road (quality and cost) and a recommendation with its reason."""
    roads = summary.get("roads", {}) if summary.get("kind", NONE) != NONE else {}
    secs = enc.seconds if enc is not None else {}
    translate_s = count * secs.get("translate_per_doc", 0.0) + count / APPLY_VECTORS_PER_S
    encode_per_doc = secs.get("encode_per_doc")
    native = enc.native_share if enc is not None else 0.0
    rows = []

    def row(name, label, quality, cpu_s, gpu_s, note=""):
        q = roads.get(quality) if quality else None
        rows.append({"road": name, "what": label, "ndcg": q,
                     "ratio_vs_today": (round(q["mean"] / roads["today"]["mean"], 3)
                                        if q and "today" in roads and roads["today"]["mean"] > 0 else None),
                     "cpu_seconds": None if cpu_s is None else round(cpu_s, 1),
                     "gpu_seconds_estimate": None if gpu_s is None else round(gpu_s, 1), "note": note})
    row("keep", "keep today's index and old model", "today", 0.0, 0.0,
        "" if baseline == "today" else "not an option: the old model is being retired")
    row("bridge", "new-model queries mapped onto today's index (inverse map)", "bridge", 0.0, 0.0,
        "queries need the new model plus the inverse map at search time")
    row("translate", "translate every stored vector", "translate", translate_s, translate_s)
    if encode_per_doc is not None:
        for share in HYBRID_SHARES:
            enc_s = share / 100 * native * count * encode_per_doc
            row(f"hybrid_{share}", f"translate, then re-embed {share}% in the background",
                f"hybrid_{share}", translate_s + enc_s, translate_s + enc_s / GPU_ENCODE_SPEEDUP)
        enc_s = native * count * encode_per_doc
        row("reembed", "re-embed every stored text with the new model", "reembed",
            enc_s + count / APPLY_VECTORS_PER_S, enc_s / GPU_ENCODE_SPEEDUP + count / APPLY_VECTORS_PER_S,
            "" if native >= 0.999 else f"{100 * (1 - native):.0f}% of points have no text: translated")
    rec, why = _recommend(summary, roads, baseline)
    return {"rows": rows, "recommendation": rec, "reason": why, "count": count,
            "cost_basis": "CPU: measured on this machine on the evaluation sample and extrapolated "
                          f"to {count} points; GPU: an estimate ({GPU_ENCODE_SPEEDUP:.0f}x encoding)"}


def _recommend(summary: dict, roads: dict, baseline: str) -> tuple[str, str]:
    if not roads:
        return ("keep" if baseline == "today" else "reembed",
                "no evidence to measure the roads on: keep today's index until labelled queries or "
                "a group field show a better one" if baseline == "today" else
                "no evidence; the old model is being retired, and re-embedding is the only road "
                "that does not depend on a translation")
    if baseline == "today" and "today" not in roads:
        return "keep", "today's index cannot be measured (no old model to encode the queries)"
    today = roads["today"]["mean"] if "today" in roads else 0.0
    # a road counts as better only when its interval clears today's mean
    better = {name: q for name, q in roads.items() if name != "today" and q["low"] > today}
    if baseline == "none":
        better = {n: q for n, q in roads.items() if n not in ("today", "bridge")}
    if not better:
        return "keep", (f"no road is shown better than today's nDCG@10 {today:.3f}: "
                        + ", ".join(f"{n} {q['mean']:.3f}" for n, q in roads.items() if n != "today"))
    best = max(better, key=lambda n: better[n]["mean"])
    family = best.split("_")[0]
    if family == "hybrid":
        family = "hybrid"
    if family == "reembed" and "translate" in better:
        return "hybrid", (f"a full re-embed is best (nDCG@10 {roads['reembed']['mean']:.3f}) and "
                          f"translating already beats today ({roads['translate']['mean']:.3f} vs "
                          f"{today:.3f}): cut over to the translation at once, then re-embed in the "
                          "background")
    names = {"reembed": "re-embedding", "translate": "translating", "bridge": "bridging queries",
             "hybrid": "a hybrid"}
    return family, (f"{names.get(family, family)} gives the best nDCG@10 ({better[best]['mean']:.3f}"
                    + (f" vs {today:.3f} today" if baseline == "today" else "") + ")"
                    + ("" if family != "reembed" or "translate" not in roads else
                       f"; translating would give {roads['translate']['mean']:.3f}"))
