"""vec2vec on the WordNet benchmark (MiniLM -> MPNet, standard protocol).

    python benchmarks/vec2vec_quality.py --minutes 10 --init random linear \
        --linear-cache /tmp/wordnet-linear

Old sample: rows [0, 20904) MiniLM; new sample: rows [20904, 41808) MPNet
(disjoint texts: unpaired); held-out: rows [41808, 50000), 8,192 with both.
Prints one JSON line per run: mean cosine, top-1 and mean rank among 8,192,
the label-free confidence the translator reports, the device it trained on
(``--device auto`` takes a CUDA GPU when PyTorch sees one, with mixed
precision), training steps per second (all restarts and the null run over the
fit's wall time, scoring included) and the wall time; then a markdown
table of all runs (on a GPU machine too: that is where the full budget runs).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from embedmigrate.metrics import mean_cosine, rank_metrics
from embedmigrate.translators import Translator, make_translator
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
    ap.add_argument("--restarts", type=int, default=1)
    ap.add_argument("--device", default="auto", help="auto (cuda > mps > cpu) | cuda | cpu ...")
    ap.add_argument("--linear-cache", default=None,
                    help="directory to save the fitted linear translator to / load it from")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    old, new, held_old, held_new = load(Path(args.data))

    linear = None
    rows = []
    for init in args.init:
        if init == "linear":
            # fit the unsupervised linear translator once; report it alone, then guide vec2vec
            t0 = time.time()
            cache = Path(args.linear_cache) if args.linear_cache else None
            if cache is not None and cache.is_dir():
                linear = Translator.load(cache)  # fitted earlier on the same samples
            else:
                linear = make_translator("linear").fit(old, new)
                if cache is not None:
                    linear.save(cache)
            print(json.dumps({"run": "unsupervised linear alone", **evaluate(linear, held_old, held_new),
                              "confidence": linear.meta.get("confidence"),
                              "wall_s": round(time.time() - t0, 1), "threads": args.threads,
                              "date": time.strftime("%Y-%m-%d %H:%M")}, default=float), flush=True)
        cfg = Config(init=init, seed=args.seed, steps=10**6, max_seconds=args.minutes * 60,
                     restarts=args.restarts, progress=False, device=args.device)
        t0 = time.time()
        v2v = Vec2Vec(cfg)
        v2v.guide = linear
        tr = v2v.fit(old, new)
        hist = tr.meta["selection"]["history"][tr.meta["selection"]["chosen"]]
        conf = tr.meta["confidence"]
        guide = conf.get("guide") or {}
        row = {"run": f"vec2vec init={init} restarts={args.restarts}",
               **evaluate(tr, held_old, held_new),
               "steps": [r["steps_run"] for r in tr.meta["selection"]["restarts"]],
               "best_step": [r["best_step"] for r in tr.meta["selection"]["restarts"]],
               "confidence": {k: v for k, v in conf.items() if k != "guide"},
               "guide": {k: guide.get(k) for k in ("agreement", "alignment")} if guide else None,
               "history": [{k: round(v, 3) for k, v in h.items()
                            if k in ("step", "gram_corr", "mnn_ratio", "cycle_error")} for h in hist]}
        wall = time.time() - t0
        row.update(device=tr.meta.get("device"), steps_per_s=round(total_steps(tr) / max(wall, 1e-9), 2),
                   wall_s=round(wall, 1), cpu_s=tr.meta["selection"].get("cpu_seconds"),
                   threads=args.threads, date=time.strftime("%Y-%m-%d %H:%M"))
        print(json.dumps(row, default=float), flush=True)
        rows.append(row)
    print(table(rows))


def total_steps(tr) -> int:
    """Every training step the fit ran: its restarts and its null run."""
    sel = tr.meta["selection"]
    return sum(r["steps_run"] for r in sel["restarts"]) + sel["null"]["steps_run"]


def table(rows: list[dict]) -> str:
    """The runs as a markdown table (device and speed next to the quality)."""
    head = ["run", "device", "steps/s", "cos", "top-1", "mean rank", "aligned", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["run"], r["device"], r["steps_per_s"], r["cos"], round(r["top1"], 4),
                 round(r["mean_rank"], 2), r["confidence"].get("aligned"), r["wall_s"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
