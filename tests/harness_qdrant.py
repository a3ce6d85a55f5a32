"""Qdrant harnesses: the in-memory store, an embedded ``path=`` store, and a real
server in Docker (testcontainers) where a Docker daemon answers.

``populate`` writes with qdrant-client directly (not through our connector),
so reading is tested independently of our writer. The embedded stores are
the exception to "a client of its own": a ``path=`` store can be opened by
only ONE client at a time, and the in-memory store exists only inside its
client, so the harness uses the very client the connector uses
(``embedmigrate.connectors.qdrant.shared_client``), while still calling
qdrant-client's own API on it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile

import numpy as np
import pytest
from qdrant_client import QdrantClient, models

from embedmigrate.connectors.qdrant import shared_client

__all__ = ["qdrant_memory_harness", "qdrant_local_harness", "qdrant_server_harness",
           "closed_port", "QdrantHarness"]

DISTANCES = {"cosine": models.Distance.COSINE, "dot": models.Distance.DOT,
             "l2": models.Distance.EUCLID}


def closed_port() -> int:
    """A local TCP port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QdrantHarness:
    engine = "qdrant"
    exact_vectors = False  # cosine collections hand back normalised vectors

    def __init__(self, name: str, client: QdrantClient, uri_prefix: str, lock=None,
                 unreachable: str | None = None):
        self.name = name
        self.client = client
        self._prefix = uri_prefix
        self._lock = lock
        self._unreachable = unreachable

    def uri(self, collection: str) -> str:
        return f"{self._prefix}/{collection}"

    def populate(self, collection, ids, vectors, payloads, metric="cosine", documents=None,
                 dim=None, vector_name=None):
        """Create ``collection`` and upsert the points with qdrant-client itself.
        ``vector_name`` makes a named vector (an extra for the Qdrant tests)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        size = dim or vectors.shape[1]
        params = models.VectorParams(size=size, distance=DISTANCES[metric])
        with self._locked():
            self.client.create_collection(
                collection, vectors_config={vector_name: params} if vector_name else params)
            for start in range(0, len(ids), 2_000):
                part = slice(start, start + 2_000)
                rows = vectors[part].tolist()
                self.client.upsert(collection, wait=True, points=models.Batch(
                    ids=list(ids[part]), payloads=list(payloads[part]),
                    vectors={vector_name: rows} if vector_name else rows))

    def serve(self, collection: str) -> str:
        """An alias to ``collection``: what an application queries."""
        alias = f"{collection}_live"
        with self._locked():
            self.client.update_collection_aliases(change_aliases_operations=[
                models.CreateAliasOperation(create_alias=models.CreateAlias(
                    collection_name=collection, alias_name=alias))])
        return alias

    def unreachable_uri(self) -> str | None:
        return self._unreachable

    def _locked(self):
        return self._lock if self._lock is not None else contextlib.nullcontext()


@pytest.fixture(scope="session")
def qdrant_memory_harness():
    client, lock = shared_client(None)
    return QdrantHarness("qdrant-memory", client, "qdrant+memory://", lock)


@pytest.fixture(scope="session")
def qdrant_local_harness():
    # qdrant-client commits sqlite once per point (~17 ms with a disk's fsync): populating
    # 10k points takes minutes, so the store lives in RAM (tmpfs) where a machine has one.
    # tests/test_qdrant_connector.py writes a store on disk too.
    ram = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    path = tempfile.mkdtemp(prefix="embedmigrate_qdrant_", dir=ram)
    client, lock = shared_client(path)  # the one client this store may have
    yield QdrantHarness("qdrant-local", client, f"qdrant+local://{path}", lock)
    shutil.rmtree(path, ignore_errors=True)


def docker_unavailable_reason() -> str | None:
    """None if a Docker daemon answers, else why not (one line)."""
    try:
        import docker
        docker.from_env(timeout=3).ping()
        return None
    except Exception as e:  # noqa: BLE001 - any failure means: no daemon to use
        return f"no Docker daemon for the qdrant/qdrant container ({type(e).__name__})"


@pytest.fixture(scope="session")
def qdrant_server_harness():
    """A real Qdrant server via testcontainers (image from $QDRANT_IMAGE, else the
    testcontainers default); skips with a one-line reason where no Docker daemon answers."""
    reason = docker_unavailable_reason()
    if reason:
        pytest.skip(reason)
    from testcontainers.community.qdrant import QdrantContainer

    image = os.environ.get("QDRANT_IMAGE")
    container = QdrantContainer(image) if image else QdrantContainer()
    with container:  # starts, waits for the server's ready log line, stops at the end
        host, port = container.get_container_host_ip(), int(container.exposed_rest_port)
        client = QdrantClient(host=host, port=port, timeout=30, check_compatibility=False)
        yield QdrantHarness("qdrant-server", client, f"qdrant://{host}:{port}",
                            unreachable=f"qdrant://user:secret@127.0.0.1:{closed_port()}/x")
        client.close()
