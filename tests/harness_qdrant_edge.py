"""Qdrant Edge harness: shards in a temporary store directory, in-process.

``populate`` writes with qdrant-edge-py's own API (not through our connector), so
reading is tested independently of our writer. A shard can be open in only ONE
``EdgeShard`` at a time, so the harness opens it through the connector's
process-wide cache (``embedmigrate.connectors.qdrant_edge.shared_shard``) while
still calling Edge's own API on it, and closes it when done, so that another
process (an ``embedmigrate apply`` child in the kill tests) can load it.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest
import qdrant_edge as edge

from embedmigrate.connectors.qdrant_edge import close_shared_shard, shared_shard

__all__ = ["qdrant_edge_harness", "QdrantEdgeHarness"]

DISTANCES = {"cosine": edge.Distance.Cosine, "dot": edge.Distance.Dot,
             "l2": edge.Distance.Euclid}


class QdrantEdgeHarness:
    engine = "qdrant-edge"
    exact_vectors = False  # cosine shards hand back normalised vectors (checked in the tests)

    def __init__(self, name: str, store: str):
        self.name = name
        self.store = store

    def uri(self, collection: str) -> str:
        return f"qdrant+edge://{self.store}/{collection}"

    def populate(self, collection, ids, vectors, payloads, metric="cosine", documents=None,
                 dim=None, vector_name=None):
        """Create the shard ``collection`` and upsert the points with Edge's own API."""
        vectors = np.asarray(vectors, dtype=np.float32)
        params = edge.EdgeVectorParams(size=dim or vectors.shape[1], distance=DISTANCES[metric])
        config = edge.EdgeConfig(vectors={vector_name: params} if vector_name else params)
        path = os.path.join(self.store, collection)
        shard, lock = shared_shard(path, create_with=config)
        with lock:
            for start in range(0, len(ids), 2_000):
                rows = vectors[start:start + 2_000].tolist()
                shard.update(edge.UpdateOperation.upsert_points([
                    edge.Point(i, {vector_name: v} if vector_name else v, p)
                    for i, v, p in zip(ids[start:start + 2_000], rows,
                                       payloads[start:start + 2_000])]))
            shard.flush()
        close_shared_shard(path)  # a connector of this process loads it again when asked

    def serve(self, collection: str) -> str:
        """A live-name link to ``collection``: what an application loads."""
        live = f"{collection}_live"
        os.symlink(collection, os.path.join(self.store, live))
        return live

    def unreachable_uri(self) -> str | None:
        return None  # in-process: there is no host to be unreachable


@pytest.fixture(scope="session")
def qdrant_edge_harness():
    store = tempfile.mkdtemp(prefix="embedmigrate_qdrant_edge_")
    yield QdrantEdgeHarness("qdrant-edge", store)
    shutil.rmtree(store, ignore_errors=True)
