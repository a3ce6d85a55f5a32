"""Which packaged-model migrations help on the shipped WordNet sample?

    python benchmarks/model_pairs.py > docs/model_pairs.txt

Embeds the 3,000 sample documents and 600 labelled queries with every packaged
model, then for every (old, new) pair fits ridge on 1,500 pairs and scores
nDCG@10 of new-model queries on the translated collection, next to old-native
(what users have before migrating) and new-native (a full re-embed).
"""

import time

import numpy as np

from embedmigrate import metrics
from embedmigrate.demo_data import load_wordnet_sample
from embedmigrate.encoders import open_encoder
from embedmigrate.translators import make_translator

MODELS = ["wordllama", "minilm", "sre", "e5-small"]

docs, queries = load_wordnet_sample()
position = {d["id"]: i for i, d in enumerate(docs)}
relevant = np.array([position[q["doc_id"]] for q in queries])
vectors = {}
for name in MODELS:
    start = time.time()
    enc = open_encoder(name)
    vectors[name] = (enc.encode([d["text"] for d in docs]),
                     enc.encode([q["text"] for q in queries], kind="query"))
    ndcg = metrics.relevance_metrics(vectors[name][1], vectors[name][0], relevant)["ndcg@10"]
    print(f"{name:10s} native nDCG@10 {ndcg:.3f}  ({time.time() - start:.0f} s to embed)", flush=True)

pairs = np.random.default_rng(0).permutation(len(docs))[:1500]
print("\n| old -> new | old-native | translated (ridge, 1,500 pairs) | new-native | verdict |")
print("|---|---|---|---|---|")
for old in MODELS:
    for new in MODELS:
        if old == new:
            continue
        t = make_translator("ridge").fit(vectors[old][0], vectors[new][0],
                                         pairs=(vectors[old][0][pairs], vectors[new][0][pairs]))
        translated = metrics.relevance_metrics(vectors[new][1], t.translate(vectors[old][0]), relevant)["ndcg@10"]
        before = metrics.relevance_metrics(vectors[old][1], vectors[old][0], relevant)["ndcg@10"]
        after = metrics.relevance_metrics(vectors[new][1], vectors[new][0], relevant)["ndcg@10"]
        verdict = "better than today" if translated >= 0.95 * before else "worse than today"
        print(f"| {old} -> {new} | {before:.3f} | {translated:.3f} | {after:.3f} | {verdict} |", flush=True)
