"""Chroma harnesses: an embedded store folder and a real `chroma run` server.

Collections are populated with chromadb's own client (not our connector), so
reading is tested independently of our writer. The embedded variant sets the
metric the classic way (collection metadata ``hnsw:space``), the server
variant through ``configuration={"hnsw": {"space": ...}}``: describe() must
read both.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

SPACES = {"cosine": "cosine", "dot": "ip", "l2": "l2"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chroma_executable() -> str:
    beside = Path(sys.executable).with_name("chroma")
    return str(beside) if beside.exists() else (shutil.which("chroma") or "chroma")


class ChromaServer:
    """`chroma run` on a free local port, started and stopped by pid."""

    def __init__(self, path: Path, port: int | None = None):
        self.path = Path(path)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    def start(self, wait: float = 60.0) -> "ChromaServer":
        self.path.mkdir(parents=True, exist_ok=True)
        log = open(self.path.parent / f"chroma-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [chroma_executable(), "run", "--path", str(self.path), "--host", "127.0.0.1",
             "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
        log.close()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chroma run exited with {self.proc.returncode}; "
                                   f"see {self.path.parent}/chroma-{self.port}.log")
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/api/v2/heartbeat", timeout=1).raise_for_status()
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"chroma run did not answer its heartbeat within {wait} s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class ChromaHarness:
    engine = "chroma"
    exact_vectors = True  # float32 in, float32 out (read back as float64, exactly)

    def __init__(self, name: str, *, store: Path | None = None, server: ChromaServer | None = None):
        self.name = name
        self.store = store
        self.server = server

    def client(self):
        import chromadb
        if self.server is not None:
            return chromadb.HttpClient(host="127.0.0.1", port=self.server.port)
        return chromadb.PersistentClient(str(self.store))

    def uri(self, collection: str) -> str:
        if self.server is not None:
            return f"chroma+http://127.0.0.1:{self.server.port}/{collection}"
        return f"chroma://{self.store}/{collection}"

    def populate(self, collection, ids, vectors, payloads, metric="cosine", documents=None, dim=None):
        space = SPACES[metric]
        if self.server is not None:
            options = {"configuration": {"hnsw": {"space": space}}}
        else:
            options = {"metadata": {"hnsw:space": space}}
        col = self.client().create_collection(collection, embedding_function=None, **options)
        step = 5000
        for s in range(0, len(ids), step):
            col.add(ids=[str(i) for i in ids[s:s + step]], embeddings=vectors[s:s + step],
                    metadatas=[p or None for p in payloads[s:s + step]],
                    documents=list(documents[s:s + step]) if documents is not None else None)
        return col

    def serve(self, collection: str) -> str:
        return collection  # no aliases in Chroma: applications query the name itself

    def unreachable_uri(self) -> str | None:
        if self.server is None:
            return None
        return f"chroma+http://user:secret@127.0.0.1:{free_port()}/x"


@pytest.fixture(scope="session")
def chroma_embedded_harness(tmp_path_factory):
    return ChromaHarness("chroma-embedded", store=tmp_path_factory.mktemp("chroma") / "store")


@pytest.fixture(scope="session")
def chroma_server_harness(tmp_path_factory):
    server = ChromaServer(tmp_path_factory.mktemp("chroma-server") / "data").start()
    yield ChromaHarness("chroma-server", server=server)
    server.stop()


__all__ = ["ChromaHarness", "ChromaServer", "chroma_embedded_harness", "chroma_server_harness",
           "free_port"]
