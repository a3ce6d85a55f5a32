"""Where `apply` spends its time, per engine: scan vs translate vs write.

    python benchmarks/apply_profile.py --n 100000 --dim 384 --batch-size 1024

The same setup as copy_throughput.py (N random unit vectors with small
payloads, a real dim -> dim Procrustes translator; the Postgres source has an
HNSW index, so the target builds one in finish_write). In a fresh process the
library's rewrite (``commands.rewrite``, what ``embedmigrate apply`` runs
first; one worker, the default) and then ``commands.verify`` run with timers
wrapped around the pieces (the library is not modified; its functions are
wrapped from this process). The rewrite is a pipeline of threads
(embedmigrate/parallel.py), so the pieces overlap; each is given as its busy
time in % of the rewrite's wall time:

    scan            reader thread: source connector scan, time inside each next()
    wait for scan   worker thread: blocked on the read-ahead queue (scan is behind)
    translate       worker thread: translator.translate(batch.vectors)
    write           writer thread: target connector write(batch)
    id checksum     writer thread: the blake2b checksum of the batch's ids
    state + lock    driver thread: state.json update (fsync) + lock heartbeat per batch
    finish_write    after the loop (Postgres: the index build)

The stage with the largest busy share sets the pace (the GIL lets
pure-Python work on different threads overlap only partly). Timers cost a few
microseconds per batch. The load average is recorded:
other jobs share the two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ENGINES = ["qdrant-local", "chroma", "chroma-server", "postgres"]
PARTS = ["scan", "wait for scan", "translate", "write", "id checksum", "state + lock", "finish_write"]


class Timers:
    def __init__(self):
        self.total = defaultdict(float)

    def wrap(self, name, fn):
        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.total[name] += time.perf_counter() - t0
        return timed

    def wrap_iter(self, name, it):
        """Time spent inside next() of an iterator."""
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self.total[name] += time.perf_counter() - t0
                return
            self.total[name] += time.perf_counter() - t0
            yield item


def instrument(timers: Timers) -> None:
    """Wrap the pieces of the rewrite (commands + parallel.copy_part) and verify with
    timers, in this process only."""
    from embedmigrate import commands, job, parallel
    from embedmigrate.state import JobState, RunLock

    open_collection, load_translator, prefetch = (parallel.open_collection, commands._load_translator,
                                                  parallel.prefetch)

    def timed_open(uri):
        conn = open_collection(uri)
        scan = conn.scan
        conn.scan = lambda *a, **k: timers.wrap_iter("scan", scan(*a, **k))
        scan_ids = conn.scan_ids  # verify's id pass
        conn.scan_ids = lambda *a, **k: timers.wrap_iter("scan", scan_ids(*a, **k))
        conn.write = timers.wrap("write", conn.write)
        conn.finish_write = timers.wrap("finish_write", conn.finish_write)
        return conn

    def timed_translator(*a, **k):
        t = load_translator(*a, **k)
        t.translate = timers.wrap("translate", t.translate)
        return t

    # the workers' connectors (parallel) and the command's (job: finish_write, verify's ids)
    parallel.open_collection = commands.open_collection = job.open_collection = timed_open
    commands._load_translator = timed_translator
    parallel.prefetch = lambda it, *a, **k: timers.wrap_iter("wait for scan", prefetch(it, *a, **k))
    parallel.id_hash = timers.wrap("id checksum", parallel.id_hash)
    JobState.update = timers.wrap("state + lock", JobState.update)
    RunLock.heartbeat = timers.wrap("state + lock", RunLock.heartbeat)


def worker(source_uri: str, target_uri: str, batch_size: int, workdir: str) -> dict:
    from embedmigrate import commands
    from embedmigrate.connectors import open_collection
    from embedmigrate.plan import Plan
    from embedmigrate.state import JobState, RunLock
    from embedmigrate.translators import make_translator

    info = open_collection(source_uri).describe()
    rng = np.random.default_rng(1)
    old = rng.normal(size=(5000, info.dim)).astype(np.float32)
    old /= np.linalg.norm(old, axis=1, keepdims=True)
    rot = np.linalg.qr(rng.normal(size=(info.dim, info.dim)))[0].astype(np.float32)
    t = make_translator("procrustes").fit(old, old @ rot, pairs=(old, old @ rot))
    p = Plan()
    p.source.uri, p.source.dim, p.target.uri = source_uri, info.dim, target_uri
    p.model.new, p.train.checkpoint = "none", str(Path(workdir) / "ckpt")
    p.apply.batch_size, p.apply.if_exists = batch_size, "replace"
    p.write(Path(workdir) / "plan.toml")
    t.save(p.checkpoint_dir)
    JobState(p.state_dir).update(stage="trained")

    timers = Timers()
    instrument(timers)
    with RunLock(p.state_dir) as lock:
        t0 = time.perf_counter()
        written = commands.rewrite(p, lock, progress=False)["written"]
        rewrite_s = time.perf_counter() - t0
        rewrite_parts = dict(timers.total)
        timers.total.clear()
        t0 = time.perf_counter()
        commands.verify(p, lock, progress=False)
        verify_s = time.perf_counter() - t0
    return {"n": written, "rewrite_s": rewrite_s, "parts": rewrite_parts, "verify_s": verify_s,
            "verify_parts": dict(timers.total)}


def run_engine(name: str, args) -> dict:
    from benchmarks.copy_throughput import start_engine
    root = Path(tempfile.mkdtemp(prefix=f"embm-prof-{name}-"))
    src, dst, stop = start_engine(name, root)
    if name == "chroma-server":  # bulk upserts on a busy machine can take more than 10 s
        src, dst = f"{src}?timeout=300", f"{dst}?timeout=300"
    try:
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                        f"from benchmarks.copy_throughput import populate; "
                        f"populate({src!r}, {args.n}, {args.dim})"], check=True)
        load_before = os.getloadavg()
        out = subprocess.run([sys.executable, __file__, "--batch-size", str(args.batch_size),
                              "--worker", src, dst, str(root)], capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(out.stderr[-3000:])
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r.update(engine=name, loadavg_before=load_before, loadavg_after=os.getloadavg())
        return r
    finally:
        stop()
        shutil.rmtree(root, ignore_errors=True)


def render(rows: list[dict], args) -> str:
    cmd = (f"python benchmarks/apply_profile.py --engines {args.engines} --n {args.n} --dim {args.dim} "
           f"--batch-size {args.batch_size}")
    out = [f"## Where apply spends its time ({args.n:,} × {args.dim}, batch {args.batch_size})", "",
           f"Command: `{cmd}`  ",
           f"Machine: {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}; "
           f"run {time.strftime('%Y-%m-%d')}.", "",
           "Busy time of each piece in % of the rewrite's wall time (threads overlap, so the "
           "shares need not add up to 100 %). Load average: 1-minute value before → after.", "",
           "| engine | rewrite s | vec/s | " + " | ".join(PARTS) + " | verify s | largest | load avg |",
           "|---|---|---|" + "---|" * len(PARTS) + "---|---|---|"]
    for r in rows:
        wall, parts = r["rewrite_s"], r["parts"]
        shares = {k: parts.get(k, 0.0) / wall for k in PARTS}
        largest = max((k for k in PARTS if k != "wait for scan"), key=shares.get)
        out.append(f"| {r['engine']} | {wall:,.1f} | {r['n'] / wall:,.0f} | "
                   + " | ".join(f"{100 * shares[k]:.0f} %" for k in PARTS)
                   + f" | {r['verify_s']:,.1f} | {largest} | "
                   f"{r['loadavg_before'][0]:.1f} → {r['loadavg_after'][0]:.1f} |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--out", default=None, help="markdown file to add the table to")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--worker", nargs=3, metavar=("SRC", "DST", "WORKDIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker[:2], args.batch_size, args.worker[2])))
        return
    rows = []
    for name in args.engines.split(","):
        rows.append(run_engine(name, args))
        print(time.strftime("%H:%M:%S"), json.dumps(rows[-1]), flush=True)
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(rows, indent=1))
    table = render(rows, args)
    print(table)
    if args.out:
        from benchmarks.copy_throughput import write_section
        write_section(Path(args.out), table)


if __name__ == "__main__":
    main()
