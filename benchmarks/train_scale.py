"""Training time and peak memory of each translator as the sample grows.

    python benchmarks/train_scale.py --sizes 20000,50000,200000 \
        --methods procrustes,ridge,mlp,semi,linear,vec2vec --out docs/benchmarks.md

MiniLM (384-d) -> MPNet (768-d) from the shared WordNet set
(../shared/data/wordnet). n samples per side:

- n <= 50,000: the first n WordNet entries, real vectors.
- n > 50,000: the 50,000 entries and 5,000 queries (55,000 real rows, both
  encodings), then rows drawn with replacement from those, each side with its
  own Gaussian noise of norm about 0.05, re-normalised. These rows are for
  time and memory only, never for quality (they are near-duplicates).

What each method gets (its default configuration unless said):
  procrustes, ridge, mlp   n pairs (both encodings of the same rows)
  semi                     2,000 pairs + n unpaired rows per side
  linear                   n unpaired rows per side (the new side shuffled)
  vec2vec                  as linear; init="random", 1 restart, capped at
                           --vec2vec-steps generator steps: the time per step
                           and per evaluation is measured and the default
                           3,000-step run extrapolated (marked as such)

Each fit runs in a fresh subprocess (torch and BLAS at --threads, default 2):
wall time and CPU time (all threads; less sensitive to other jobs) of fit(),
the process's RSS just before fit() (data loaded, libraries imported) and its
peak RSS (VmHWM, its own address space). The load average before and after
is recorded: other jobs share the two cores, so wall seconds are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "wordnet"
METHODS = ["procrustes", "ridge", "mlp", "semi", "linear", "vec2vec"]
SEMI_PAIRS = 2000
NOISE_NORM = 0.05
MLP_HIDDEN = 1024  # ResidualMLP.Config.hidden
VEC2VEC_DEFAULT_STEPS = 3000  # Vec2Vec Config.steps


# --- data -------------------------------------------------------------------------------

def wordnet(model: str, rows: int | None = None) -> np.ndarray:
    """The first ``rows`` entries (float32 copies, so the process holds only those),
    or all entries then the queries."""
    docs = np.load(DATA / f"docs.{model}.f16.npy", mmap_mode="r")
    if rows is not None:
        return docs[:rows].astype(np.float32)
    return np.concatenate([docs, np.load(DATA / f"queries.{model}.f16.npy")]).astype(np.float32)


def build(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """n aligned rows (old MiniLM, new MPNet) and how they were made."""
    if n <= 50_000:
        return wordnet("minilm", n), wordnet("mpnet", n), "real WordNet entries"
    old, new = wordnet("minilm"), wordnet("mpnet")
    rng = np.random.default_rng(seed)
    pick = rng.integers(len(old), size=n - len(old))
    extra = [_noisy(side[pick], rng) for side in (old, new)]
    return (np.concatenate([old, extra[0]]), np.concatenate([new, extra[1]]),
            f"{len(old):,} real rows + {n - len(old):,} resampled with noise (time/memory only)")


def _noisy(x: np.ndarray, rng) -> np.ndarray:
    x = x + rng.normal(scale=NOISE_NORM / np.sqrt(x.shape[1]), size=x.shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def inputs(method: str, old: np.ndarray, new: np.ndarray, seed: int = 0):
    """(old, new, pairs) for fit(), per the table in the module doc."""
    if method in ("procrustes", "ridge", "mlp"):
        return old, new, (old, new)
    shuffled = new[np.random.default_rng(seed).permutation(len(new))]
    if method == "semi":
        return old, shuffled, (old[:SEMI_PAIRS], new[:SEMI_PAIRS])
    return old, shuffled, None


# --- the child: one fit --------------------------------------------------------------------

def _status_mb(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(method: str, n: int, vec2vec_steps: int, threads: int) -> dict:
    options: dict = {}
    timers = {}
    if method in ("mlp", "vec2vec"):
        import torch
        torch.set_num_threads(threads)
    if method == "vec2vec":
        options = dict(steps=vec2vec_steps, restarts=1, init="random", progress=False)
        timers = _time_vec2vec()
    from embedmigrate.translators import make_translator
    old, new, how = build(n)
    fit_old, fit_new, pairs = inputs(method, old, new)
    del old, new
    data_mb = sum(a.nbytes for a in (fit_old, fit_new)) / 2**20
    t = make_translator(method, **options)
    rss_before = _status_mb("VmRSS")
    start, cpu_start = time.perf_counter(), time.process_time()
    t.fit(fit_old, fit_new, pairs=pairs)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    out = {"method": method, "n": n, "data": how, "fit_seconds": seconds, "fit_cpu_seconds": cpu,
           "rss_before_fit_mb": rss_before,
           "peak_rss_mb": _status_mb("VmHWM"), "input_arrays_mb": data_mb}
    if method == "mlp":
        out["training"] = t.meta.get("training")
    if method == "vec2vec":
        out["vec2vec"] = {k: (v if not isinstance(v, list) else
                              {"count": len(v), "mean_s": float(np.mean(v)) if v else None})
                          for k, v in timers.items()}
    return out


def _time_vec2vec() -> dict:
    """Wrap vec2vec's training step and evaluation with timers (and count one step's FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode
    from embedmigrate.translators import vec2vec
    timers: dict = {"step_s": [], "eval_s": [], "flops_per_step": None}
    step, evaluate = vec2vec._train_step, vec2vec._evaluate

    def timed_step(*a, **k):
        if timers["flops_per_step"] is None and len(timers["step_s"]) == 20:  # after warm-up
            with FlopCounterMode(display=False) as counter:
                result = step(*a, **k)
            timers["flops_per_step"] = counter.get_total_flops()
            return result
        t0 = time.perf_counter()
        result = step(*a, **k)
        timers["step_s"].append(time.perf_counter() - t0)
        return result

    def timed_eval(*a, **k):
        t0 = time.perf_counter()
        result = evaluate(*a, **k)
        timers["eval_s"].append(time.perf_counter() - t0)
        return result

    vec2vec._train_step, vec2vec._evaluate = timed_step, timed_eval
    return timers


# --- the parent ------------------------------------------------------------------------------

def run_one(method: str, n: int, vec2vec_steps: int, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", method, str(n),
                          "--vec2vec-steps", str(vec2vec_steps), "--threads", str(threads)], capture_output=True, text=True, env=env)
    if out.returncode:
        return {"method": method, "n": n, "error": out.stderr.strip().splitlines()[-1][:300],
                "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r.update(process_seconds=time.perf_counter() - t0, loadavg_before=load_before,
             loadavg_after=os.getloadavg())
    return r


def vec2vec_extrapolation(r: dict) -> dict:
    """A default 3,000-step run from the measured step and evaluation times."""
    v = r["vec2vec"]
    step_s, eval_s = v["step_s"]["mean_s"], v["eval_s"]["mean_s"] or 0.0
    evals = VEC2VEC_DEFAULT_STEPS // 250 + 1
    measured_loop = v["step_s"]["count"] * step_s + v["eval_s"]["count"] * eval_s
    setup = max(r["fit_seconds"] - measured_loop, 0.0)
    # CPU time is what other jobs on the machine disturb least: the whole fit's CPU
    # time per step run (setup and the evaluations included, so a slight overestimate)
    steps_run = v["step_s"]["count"] + (1 if v["flops_per_step"] else 0)
    cpu_step = r["fit_cpu_seconds"] / steps_run if "fit_cpu_seconds" in r else None
    gflop = v["flops_per_step"] / 1e9 if v["flops_per_step"] else None
    return {"step_ms": step_s * 1000, "eval_s": eval_s,
            "default_run_s": setup + VEC2VEC_DEFAULT_STEPS * step_s + evals * eval_s,
            "cpu_s_per_step": cpu_step,
            "default_run_cpu_s": cpu_step * VEC2VEC_DEFAULT_STEPS if cpu_step else None,
            "gflop_per_cpu_s": gflop / cpu_step if gflop and cpu_step else None,
            "gflop_per_step": gflop}


def render(rows: list[dict], args) -> str:
    cmd = (f"python benchmarks/train_scale.py --sizes {args.sizes} --methods {args.methods} "
           f"--vec2vec-steps {args.vec2vec_steps} --threads {args.threads}")
    out = ["## Translator training time and memory vs sample size (MiniLM → MPNet)", "",
           f"Command: `{cmd}`  ",
           f"Machine: {os.cpu_count()} cores, no GPU, {platform.platform()}, Python "
           f"{platform.python_version()}; run {time.strftime('%Y-%m-%d')}.", "",
           "One fresh process per fit. fit s: wall time of `fit()`. RSS before fit: data loaded "
           "and libraries imported; peak: VmHWM of the process. Load average: 1-minute value "
           "before → after.", "",
           "| method | n | data | fit s (wall) | fit CPU s | RSS before fit MB | peak RSS MB | load avg |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        load = f"{r['loadavg_before'][0]:.1f} → {r['loadavg_after'][0]:.1f}"
        if "error" in r:
            out.append(f"| {r['method']} | {r['n']:,} | – | failed: {r['error']} | – | – | – | {load} |")
            continue
        note = ""
        if r["method"] == "mlp" and r.get("training"):
            tr = r["training"]
            note = f" ({tr['epochs']} epochs)"
        if r["method"] == "vec2vec":
            note = f" ({args.vec2vec_steps} steps)"
        data = "real" if r["data"].startswith("real") else "resampled + noise"
        cpu = f"{r['fit_cpu_seconds']:,.0f}" if "fit_cpu_seconds" in r else "–"
        out.append(f"| {r['method']} | {r['n']:,} | {data} | {r['fit_seconds']:,.1f}{note} | {cpu} | "
                   f"{r['rss_before_fit_mb']:,.0f} | {r['peak_rss_mb']:,.0f} | {load} |")
    v2v = [r for r in rows if r["method"] == "vec2vec" and "error" not in r]
    if v2v:
        out += ["", "vec2vec, **extrapolated** from the capped runs above (default CPU config, "
                f"{VEC2VEC_DEFAULT_STEPS:,} steps, one restart, evaluation every 250 steps):", "",
                "| n | wall ms / step | s / evaluation | default run, extrapolated wall s | "
                "CPU s / step | default run, extrapolated CPU s | GFLOP / step | GFLOP per CPU s |",
                "|---|---|---|---|---|---|---|---|"]

        def num(x, fmt):
            return "–" if x is None else format(x, fmt)
        for r in v2v:
            e = vec2vec_extrapolation(r)
            out.append(f"| {r['n']:,} | {e['step_ms']:,.0f} | {e['eval_s']:.1f} | {e['default_run_s']:,.0f} | "
                       f"{num(e['cpu_s_per_step'], '.2f')} | {num(e['default_run_cpu_s'], ',.0f')} | "
                       f"{num(e['gflop_per_step'], '.1f')} | {num(e['gflop_per_cpu_s'], '.1f')} |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20000,50000,200000")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--vec2vec-steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2, help="torch / BLAS threads of each fit")
    ap.add_argument("--out", default=None, help="markdown file to add the table to")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--render", nargs="+", metavar="JSON",
                    help="only print the tables from the --json-out files of earlier runs")
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.vec2vec_steps, args.threads)))
        return
    if args.render:
        rows = [r for f in args.render for r in json.loads(Path(f).read_text())]
        order = {m: k for k, m in enumerate(METHODS)}
        print(render(sorted(rows, key=lambda r: (order.get(r["method"], 99), r["n"])), args))
        return
    rows = []
    for method in args.methods.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            r = run_one(method, n, args.vec2vec_steps, args.threads)
            print(time.strftime("%H:%M:%S"), json.dumps(r), flush=True)
            rows.append(r)
            if args.json_out:
                Path(args.json_out).write_text(json.dumps(rows, indent=1))
    table = render(rows, args)
    print(table)
    if args.out:
        from benchmarks.copy_throughput import write_section
        write_section(Path(args.out), table)


if __name__ == "__main__":
    main()
