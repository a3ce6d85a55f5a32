"""vec2vec on the WordNet benchmark (MiniLM -> MPNet, standard protocol).

    python benchmarks/vec2vec_quality.py --minutes 10 --init random linear

Old sample: rows [0, 20904) MiniLM; new sample: rows [20904, 41808) MPNet
(disjoint texts: unpaired); held-out: rows [41808, 50000), 8,192 with both.
Prints one JSON line per run: mean cosine, top-1 and mean rank among 8,192,
the label-free confidence the translator reports, and the wall time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from embedmigrate.metrics import mean_cosine, rank_metrics
from embedmigrate.translators import make_translator
from embedmigrate.translators.vec2vec import Config, Vec2Vec

DATA = Path("/work/shared/data/wordnet")


def load(data: Path):
    old = np.load(data / "docs.minilm.f16.npy").astype(np.float32)
    new = np.load(data / "docs.mpnet.f16.npy").astype(np.float32)
    return old[:20904], new[20904:41808], old[41808:50000], new[41808:50000]


def evaluate(translator, held_old, held_new) -> dict:
    pred = translator.translate(held_old)
    return {"cos": round(mean_cosine(pred, held_new), 4), **rank_metrics(pred, held_new, chunk=8192)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget per run")
    ap.add_argument("--init", nargs="+", default=["random", "linear"])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    old, new, held_old, held_new = load(Path(args.data))

    linear = None
    for init in args.init:
        if init == "linear":
            # fit the unsupervised linear translator once; report it alone, then guide vec2vec
            t0 = time.time()
            linear = make_translator("linear").fit(old, new)
            print(json.dumps({"run": "unsupervised linear alone", **evaluate(linear, held_old, held_new),
                              "confidence": linear.meta.get("confidence"),
                              "wall_s": round(time.time() - t0, 1), "threads": args.threads,
                              "date": time.strftime("%Y-%m-%d %H:%M")}, default=float), flush=True)
        cfg = Config(init=init, seed=args.seed, steps=10**6, max_seconds=args.minutes * 60,
                     progress=False)
        t0 = time.time()
        v2v = Vec2Vec(cfg)
        v2v.guide = linear
        tr = v2v.fit(old, new)
        hist = tr.meta["selection"]["history"][tr.meta["selection"]["chosen"]]
        row = {"run": f"vec2vec init={init}", **evaluate(tr, held_old, held_new),
               "steps": tr.meta["selection"]["restarts"][0]["steps_run"],
               "best_step": tr.meta["selection"]["restarts"][0]["best_step"],
               "confidence": {k: v for k, v in tr.meta["confidence"].items() if k != "guide"},
               "history": [{k: round(v, 3) for k, v in h.items()
                            if k in ("step", "gram_corr", "mnn_ratio", "cycle_error")} for h in hist]}
        row.update(wall_s=round(time.time() - t0, 1), threads=args.threads,
                   date=time.strftime("%Y-%m-%d %H:%M"))
        print(json.dumps(row, default=float), flush=True)


if __name__ == "__main__":
    main()
