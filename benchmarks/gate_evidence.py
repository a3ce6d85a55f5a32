"""Does sibling evidence (no labels) order the roads as labelled queries do?

Builds grouped collections from text that ships in packages and measures, for
several model pairs, nDCG@10 of today's index, a translated index and a full
re-embed, on sibling queries (a point's other group members are relevant) and
on labelled queries, plus the agreement numbers the gate no longer trusts
(recall@10 retained against the new model, overlap with today's results).

Corpora:
  wordnet   the WordNet sample shipped in embedmigrate/data: group = synset,
            members = its gloss and its example sentence; labelled query =
            the example sentence, relevant = the gloss.
  foldoc    Debian's dict-foldoc (apt-get install dict-foldoc): each entry's
            definition split into sentences, group = headword; labelled query =
            the headword, relevant = every sentence of its entry.

    python benchmarks/gate_evidence.py --corpus wordnet foldoc \
        --pairs sre:minilm wordllama:minilm minilm:e5-small e5-small:minilm --out docs/gate_results.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import time
from pathlib import Path

import numpy as np

from embedmigrate import evidence as E
from embedmigrate import metrics as M
from embedmigrate.encoders import open_encoder
from embedmigrate.translators import make_translator

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def wordnet_corpus(n_groups: int = 600, n_singles: int = 1400):
    from embedmigrate.demo_data import load_wordnet_sample
    docs, queries = load_wordnet_sample()
    by_id = {d["id"]: d["text"] for d in docs}
    linked = {q["doc_id"] for q in queries}
    texts, groups, labelled = [], [], []
    for q in queries[:n_groups]:
        texts += [by_id[q["doc_id"]], q["text"]]
        groups += [q["doc_id"], q["doc_id"]]
        labelled.append((q["text"], {len(texts) - 2: 1.0}))
    for d in [d for d in docs if d["id"] not in linked][:n_singles]:
        texts.append(d["text"])
        groups.append(d["id"])
    return texts, groups, labelled


def foldoc_corpus(n_entries: int = 700, seed: int = 0):
    data = gzip.open("/usr/share/dictd/foldoc.dict.dz").read().decode("utf-8", "replace")
    entries = []
    for line in Path("/usr/share/dictd/foldoc.index").read_text().splitlines():
        head, off, length = line.split("\t")
        if head.startswith("00-database"):
            continue
        o, n = (sum(B64.index(c) * 64 ** i for i, c in enumerate(reversed(x))) for x in (off, length))
        body = data[o:o + n].split("\n", 1)[-1]
        body = re.sub(r"\(\d{4}-\d{2}-\d{2}\)", " ", body)
        body = re.sub(r"[{}<>]", "", " ".join(body.split()))
        sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", body) if len(s.split()) >= 5]
        if 2 <= len(sentences) <= 8:
            entries.append((head, sentences))
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(entries), size=min(n_entries, len(entries)), replace=False)
    texts, groups, labelled = [], [], []
    for k in sorted(pick.tolist()):
        head, sentences = entries[k]
        start = len(texts)
        texts += sentences
        groups += [head] * len(sentences)
        labelled.append((head, {start + j: 1.0 for j in range(len(sentences))}))
    return texts, groups, labelled


def encode(model: str, texts: list, cache: Path, kind: str = "passage") -> np.ndarray:
    from embedmigrate.encoders import encode_cached
    return encode_cached(open_encoder(model), texts, cache, kind=kind, show_progress=False)


def measure(texts, groups, labelled, old, new, cache, n_pairs=1000, seed=0):
    O, N = encode(old, texts, cache), encode(new, texts, cache)
    rng = np.random.default_rng(seed)
    train = rng.permutation(len(texts))[:n_pairs]
    translator = make_translator("procrustes").fit(O[train], N[train], pairs=(O[train], N[train]))
    T = translator.translate(O)
    members: dict = {}
    for k, g in enumerate(groups):
        members.setdefault(g, []).append(k)
    q_sib = [k for g in members.values() if len(g) >= 2 for k in g]
    if len(q_sib) > 1000:
        q_sib = sorted(rng.choice(q_sib, 1000, replace=False).tolist())
    rel_sib = [{j: 1.0 for j in members[groups[q]] if j != q} for q in q_sib]
    ex = np.asarray(q_sib)
    sib = {"today": E.ndcg_per_query(O[ex], O, rel_sib, exclude=ex),
           "translated": E.ndcg_per_query(N[ex], T, rel_sib, exclude=ex),
           "reembed": E.ndcg_per_query(N[ex], N, rel_sib, exclude=ex)}
    # the same sibling queries encoded as *queries* by each model (asymmetric models
    # such as e5 encode queries and passages differently)
    sq_texts = [texts[q] for q in q_sib]
    sqo, sqn = encode(old, sq_texts, cache, "query"), encode(new, sq_texts, cache, "query")
    sibq = {"today": E.ndcg_per_query(sqo, O, rel_sib, exclude=ex),
            "translated": E.ndcg_per_query(sqn, T, rel_sib, exclude=ex),
            "reembed": E.ndcg_per_query(sqn, N, rel_sib, exclude=ex)}
    qtexts = [t for t, _ in labelled]
    rel_lab = [r for _, r in labelled]
    qo, qn = encode(old, qtexts, cache, "query"), encode(new, qtexts, cache, "query")
    lab = {"today": E.ndcg_per_query(qo, O, rel_lab), "translated": E.ndcg_per_query(qn, T, rel_lab),
           "reembed": E.ndcg_per_query(qn, N, rel_lab)}
    truth = M.top_k(qn, N, 10)
    agreement = {"recall_retained_translated": M.overlap_at_k(M.top_k(qn, T, 10), truth),
                 "recall_retained_today": M.overlap_at_k(M.top_k(qo, O, 10), truth)}
    out = {"old": old, "new": new, "points": len(texts), "sibling_queries": len(q_sib),
           "labelled_queries": len(labelled), "agreement": agreement}
    for name, roads in (("siblings", sib), ("siblings_as_queries", sibq), ("labels", lab)):
        out[name] = {k: round(float(v.mean()), 4) for k, v in roads.items()}
        out[name + "_translated_vs_today"] = E.ratio_interval(roads["translated"], roads["today"])
    order = lambda d: sorted(d, key=d.get, reverse=True)  # noqa: E731
    out["same_order"] = order(out["siblings"]) == order(out["labels"])
    out["same_order_as_queries"] = order(out["siblings_as_queries"]) == order(out["labels"])
    return out


def render(results: list) -> str:
    """The tables of docs/gate.md from the results JSON."""
    def row3(d):
        return " / ".join(f"{d[k]:.3f}" for k in ("today", "translated", "reembed"))

    def ci(r):
        return f"{r['ratio']:.2f} ({r['low']:.2f}-{r['high']:.2f})"
    out = ["| corpus | old -> new | siblings, texts as queries: today / translated / re-embed | "
           "translated / today | labels: today / translated / re-embed | translated / today | "
           "same order | siblings, stored vectors as queries | recall@10 retained: translated / today |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        a = r["agreement"]
        out.append(f"| {r['corpus']} | {r['old']} -> {r['new']} | {row3(r['siblings_as_queries'])} | "
                   f"{ci(r['siblings_as_queries_translated_vs_today'])} | {row3(r['labels'])} | "
                   f"{ci(r['labels_translated_vs_today'])} | "
                   f"{'yes' if r['same_order_as_queries'] else 'no'} | {row3(r['siblings'])} "
                   f"({'same' if r['same_order'] else 'different'} order) | "
                   f"{a['recall_retained_translated']:.3f} / {a['recall_retained_today']:.3f} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--render", default="", help="print docs/gate.md's table from a results JSON")
    ap.add_argument("--corpus", nargs="+", default=["wordnet", "foldoc"])
    ap.add_argument("--pairs", nargs="+", default=["sre:minilm", "wordllama:minilm",
                                                   "minilm:e5-small", "e5-small:minilm"])
    ap.add_argument("--cache", default=".bench-cache/gate")
    ap.add_argument("--out", default="gate_results.json")
    args = ap.parse_args()
    if args.render:
        print(render(json.loads(Path(args.render).read_text())))
        return
    results = []
    for corpus in args.corpus:
        texts, groups, labelled = {"wordnet": wordnet_corpus, "foldoc": foldoc_corpus}[corpus]()
        for pair in args.pairs:
            old, new = pair.split(":")
            start = time.perf_counter()
            r = measure(texts, groups, labelled, old, new, Path(args.cache))
            r.update(corpus=corpus, seconds=round(time.perf_counter() - start, 1))
            results.append(r)
            print(json.dumps(r), flush=True)
            Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
