"""Connectors: one module per vector store, chosen by URI scheme.

    >>> from embedmigrate.connectors import open_collection
    >>> src = open_collection("chroma:///data/chroma/docs")
    >>> src.describe().count

Backends are imported lazily, so a Qdrant user needs neither chromadb nor
psycopg installed; a missing one raises an error naming the extra to install.
"""

from __future__ import annotations

import importlib

from ..errors import MissingDependencyError
from .base import Batch, CollectionInfo, Connector
from .uri import CollectionURI, parse_uri

# engine -> (module, class, pip extra, the third-party module it needs)
REGISTRY = {
    "qdrant": ("embedmigrate.connectors.qdrant", "QdrantConnector", "qdrant", "qdrant_client"),
    "qdrant-edge": ("embedmigrate.connectors.qdrant_edge", "QdrantEdgeConnector", "qdrant-edge",
                    "qdrant_edge"),
    "chroma": ("embedmigrate.connectors.chroma", "ChromaConnector", "chroma", "chromadb"),
    "postgres": ("embedmigrate.connectors.postgres", "PostgresConnector", "postgres", "psycopg"),
}


def connector_class(engine: str) -> type[Connector]:
    module_name, class_name, extra, needs = REGISTRY[engine]
    try:
        importlib.import_module(needs)
    except ImportError:
        raise MissingDependencyError(needs, extra) from None
    return getattr(importlib.import_module(module_name), class_name)


def open_collection(uri: str | CollectionURI) -> Connector:
    """The connector for the collection a URI names (nothing is contacted yet)."""
    parsed = uri if isinstance(uri, CollectionURI) else parse_uri(uri)
    return connector_class(parsed.engine)(parsed)


__all__ = ["Batch", "CollectionInfo", "Connector", "CollectionURI", "open_collection", "parse_uri"]
