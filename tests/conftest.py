"""Shared fixtures.

Every engine contributes a *harness* (tests/harness_<engine>.py): a session
fixture that starts the real engine and returns an object with

    name                 e.g. "postgres-tcp"
    engine               "qdrant" | "chroma" | "postgres"
    uri(collection)      the embedmigrate URI of a collection on that store
    populate(collection, ids, vectors, payloads, metric="cosine", documents=None, dim=None)
                         create a collection with the engine's *own* client
                         (so reading is tested independently of our writer);
                         dim is given for an empty collection
    serve(collection)    the name an application would query: Qdrant creates
                         an alias to the collection; others return the name
    unreachable_uri()    a URI of the same scheme that nobody listens on, or None
    exact_vectors        False where the engine normalises or rounds vectors

``engine`` (parametrised over every harness) runs the conformance suite in
tests/test_connectors.py against all of them: a new backend is one connector
module plus one harness.
"""

from __future__ import annotations

import itertools
import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # several test workers share the cores: one compute thread each (and in the CLI
    # subprocesses they start) instead of every torch/BLAS pool claiming them all
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

# harness fixture names, one per engine variant (defined in tests/harness_*.py)
HARNESSES = [
    "qdrant_memory_harness", "qdrant_local_harness", "qdrant_edge_harness",
    "chroma_embedded_harness", "chroma_server_harness",
    "postgres_socket_harness", "postgres_tcp_harness",
]

from harness_chroma import *  # noqa: E402,F401,F403
from harness_postgres import *  # noqa: E402,F401,F403
from harness_qdrant import *  # noqa: E402,F401,F403
from harness_qdrant_edge import *  # noqa: E402,F401,F403


@pytest.fixture(params=HARNESSES)
def engine(request):
    return request.getfixturevalue(request.param)


_names = itertools.count()


@pytest.fixture
def fresh_name(request):
    """A collection name unique within the test session."""
    def make(prefix: str = "c") -> str:
        return f"{prefix}_{os.getpid()}_{next(_names)}"
    return make


def make_points(n: int, dim: int, seed: int = 0, *, normalise: bool = True, int_ids: bool = True):
    """Clustered float32 vectors with small, varied payloads (what real collections hold)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(16, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, 16, n)] + 0.3 * rng.normal(size=(n, dim)).astype(np.float32)
    if normalise:
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = list(range(1, n + 1)) if int_ids else [f"doc-{i:06d}" for i in range(n)]
    # tags are never empty: Chroma refuses empty lists in metadata (it cannot store them)
    payloads = [{"title": f"entry {i}", "n": i, "tags": ["a", "b", "c"][: 1 + i % 3], "score": i / 7,
                 "text": f"the text of entry {i}"} for i in range(n)]
    return ids, vectors.astype(np.float32), payloads


class WordNetVectors:
    """The WordNet sample that ships with embedmigrate (3,000 documents, 600 queries with
    the id of their relevant document), encoded with packaged models at test time, each
    model once per session. ``docs(model)`` / ``queries(model)`` are float32 rows in the
    files' order; ``doc_ids`` / ``query_doc_ids`` label them."""

    def __init__(self):
        from embedmigrate.demo_data import load_wordnet_sample
        docs, queries = load_wordnet_sample()
        self.doc_ids = [d["id"] for d in docs]
        self.query_doc_ids = [q["doc_id"] for q in queries]
        self._texts = {"docs": [d["text"] for d in docs], "queries": [q["text"] for q in queries]}
        self._vectors: dict = {}

    def docs(self, model: str) -> np.ndarray:
        return self._encoded(model, "docs")

    def queries(self, model: str) -> np.ndarray:
        return self._encoded(model, "queries")

    def _encoded(self, model: str, what: str) -> np.ndarray:
        if (model, what) not in self._vectors:
            from embedmigrate.encoders import open_encoder
            kind = "query" if what == "queries" else "passage"
            self._vectors[model, what] = open_encoder(model).encode(self._texts[what], kind=kind)
        return self._vectors[model, what]


@pytest.fixture(scope="session")
def wordnet_vectors():
    """The shipped WordNet sample, encoded on demand (MiniLM: ~30 s for all 3,600 texts on
    an idle 2-core machine; wordllama: ~1 s)."""
    return WordNetVectors()
