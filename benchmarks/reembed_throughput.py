"""Re-embed apply throughput vs the encoder alone, on the same texts and batch size.

    nice -n 10 python benchmarks/reembed_throughput.py --n 2000 --engines chroma,postgres \
        --out docs/benchmarks.md

For each engine a source collection of N points (the shipped WordNet sample's texts
in a ``text`` payload field, cycled with a counter past 3,000; random 256-d "old"
vectors) is built, not timed. Then, each in a fresh process:
  encode   the encoder alone: ``encoder.encode(chunk)`` over the same texts in chunks of
           --batch-size (apply's scan batch), after one warm-up call, on a thread as in
           apply (PyTorch ran the same encode about 2x slower on the main thread here);
  reembed  embedmigrate's rewrite with [strategy] name = "reembed": scan -> encode each
           point's text -> write, progress persisted after every batch, the same
           encoder instance warmed up the same way (model loading is timed in neither).
The ratio reembed / encode says whether the pipeline keeps the encoder busy (goal >= 0.9).
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
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from copy_throughput import start_engine, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def corpus(n: int) -> list[str]:
    from embedmigrate.demo_data import load_wordnet_sample
    base = [d["text"] for d in load_wordnet_sample()[0]]
    return [base[i % len(base)] + ("" if i < len(base) else f" ({i // len(base)})") for i in range(n)]


def populate(uri: str, texts: list[str], dim: int = 256, batch: int = 1000) -> None:
    from embedmigrate.connectors import Batch, CollectionInfo, open_collection
    conn = open_collection(uri)
    if conn.engine == "postgres":
        import psycopg
        from embedmigrate.connectors.uri import parse_uri
        u = parse_uri(uri)
        with psycopg.connect(dbname=u.database, user=u.username, host=u.options["host"],
                             autocommit=True) as pg:
            pg.execute("CREATE EXTENSION IF NOT EXISTS vector")
            pg.execute(f"CREATE TABLE {u.collection} (id bigint PRIMARY KEY, embedding vector({dim}), "
                       "text text, n bigint)")
    else:
        info = CollectionInfo(engine=conn.engine, name="(synthetic)", count=0, dim=dim, metric="cosine",
                              id_type="int", payload_fields=["text", "n"])
        conn.create_like(info, dim=dim, if_exists="replace")
    rng = np.random.default_rng(0)
    for s in range(0, len(texts), batch):
        ids = list(range(s + 1, min(s + batch, len(texts)) + 1))
        v = rng.normal(size=(len(ids), dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        conn.write(Batch(ids, v, [{"text": texts[i - 1], "n": i} for i in ids]))
    conn.finish_write()
    conn.close()


def warm_encoder(model: str):
    from embedmigrate.encoders import open_encoder
    encoder = open_encoder(model)
    encoder.encode(["warm-up sentence"] * 16)
    return encoder


def child(mode: str, source_uri: str, target_uri: str, model: str, n: int, batch_size: int,
          workdir: str) -> None:
    """Runs in its own process; prints one JSON line."""
    encoder = warm_encoder(model)
    if mode == "encode":
        texts = corpus(n)

        def encode_all():
            for s in range(0, n, batch_size):
                encoder.encode(texts[s:s + batch_size])
        # on a thread, like the pipeline's worker: on this machine the same encode ran about
        # twice as slowly on the main thread (PyTorch's thread pool), which would flatter apply
        start = time.perf_counter()
        worker = threading.Thread(target=encode_all)
        worker.start()
        worker.join()
        seconds = time.perf_counter() - start
    else:
        from embedmigrate import commands
        from embedmigrate.plan import Plan
        from embedmigrate.state import JobState, RunLock
        from embedmigrate.transform import ReembedTransform
        from embedmigrate.translators import make_translator
        rng = np.random.default_rng(1)
        old = rng.normal(size=(500, 256)).astype(np.float32)
        new = rng.normal(size=(500, encoder.dim)).astype(np.float32)
        translator = make_translator("ridge").fit(old, new, pairs=(old, new))  # for points without text
        p = Plan()
        p.source.uri, p.source.dim, p.source.text_field = source_uri, 256, "text"
        p.target.uri, p.model.new, p.strategy.name = target_uri, model, "reembed"
        p.train.checkpoint = str(Path(workdir) / "ckpt")
        p.apply.batch_size, p.apply.if_exists = batch_size, "replace"
        plan_path = p.write(Path(workdir) / f"plan-{os.getpid()}.toml")
        translator.save(p.checkpoint_dir)
        JobState(p.state_dir).update(stage="trained")
        # the warmed encoder, as in the "encode" run: model loading is timed in neither
        commands.make_transform = lambda plan, info=None, strategy=None, **kw: ReembedTransform(
            encoder, "text", model=model, translator=translator)
        start = time.perf_counter()
        with RunLock(p.state_dir) as lock:
            written = commands.rewrite(p, lock, progress=False)["written"]
        seconds = time.perf_counter() - start
        assert written == n, written
        shutil.rmtree(p.state_dir, ignore_errors=True)
        plan_path.unlink()
    print(json.dumps({"mode": mode, "n": n, "seconds": seconds, "texts_per_s": n / seconds,
                      "load_after": os.getloadavg()[0]}))


def run_child(args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], capture_output=True,
                         text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--engines", default="chroma,postgres")
    ap.add_argument("--repeat", type=int, default=2, help="alternating encode/reembed runs per engine")
    ap.add_argument("--out", default=None, help="append/replace the section in this markdown file")
    ap.add_argument("--child", nargs=7, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, src, dst, model, n, batch, workdir = args.child
        child(mode, src, dst, model, int(n), int(batch), workdir)
        return
    rows, load_before = [], os.getloadavg()[0]
    texts = corpus(args.n)
    for name in args.engines.split(","):
        root = Path(tempfile.mkdtemp(prefix=f"reembed-bench-{name}-"))
        src, dst, stop = start_engine(name, root)
        try:
            populate(src, texts)
            runs = {"encode": [], "reembed": []}
            for _ in range(args.repeat):  # alternate, so a change in load hits both
                for mode in ("encode", "reembed"):
                    r = run_child([mode, src, dst, args.model, args.n, args.batch_size, root])
                    runs[mode].append(r)
                    print(name, json.dumps(r), flush=True)
            rows.append((name, runs))
        finally:
            stop()
            shutil.rmtree(root, ignore_errors=True)
    table = render(rows, args, load_before)
    print(table)
    if args.out:
        write_section(Path(args.out), table)


def render(rows, args, load_before: float) -> str:
    cmd = (f"nice -n 10 python benchmarks/reembed_throughput.py --n {args.n} --model {args.model} "
           f"--batch-size {args.batch_size} --engines {args.engines} --repeat {args.repeat}")
    out = [f"## Re-embed apply vs the encoder alone ({args.n:,} texts, {args.model}, batch {args.batch_size})",
           "", f"Command: `{cmd}`  ",
           f"Machine: {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}; "
           f"run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
           f"Load average (1 min) before the run: {load_before:.1f}; after each child run "
           "(per engine: the encoder-alone runs, then the re-embed runs): "
           + "; ".join(f"{name} " + ", ".join(f"{r['load_after']:.1f}" for m in runs.values() for r in m)
                       for name, runs in rows) + ".",
           "", "Best of the runs for each (texts/s); ratio = re-embed apply / encoder alone.", "",
           "| engine | encoder alone texts/s (runs) | re-embed apply texts/s (runs) | ratio (best/best) |",
           "|---|---|---|---|"]
    for name, runs in rows:
        enc = [r["texts_per_s"] for r in runs["encode"]]
        rem = [r["texts_per_s"] for r in runs["reembed"]]
        out.append(f"| {name} | {max(enc):.1f} ({', '.join(f'{x:.1f}' for x in enc)}) | "
                   f"{max(rem):.1f} ({', '.join(f'{x:.1f}' for x in rem)}) | {max(rem) / max(enc):.2f} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
