"""Connectors: one module per vector store, chosen by URI scheme.

    >>> from embedmigrate.connectors import open_collection
    >>> src = open_collection("chroma:///data/chroma/docs")
    >>> src.describe().count

A new engine is one module here (a ``Connector`` subclass) and one line in
``REGISTRY``.

Backends are imported lazily, so a Qdrant user needs neither chromadb nor
psycopg installed; a missing one raises an error naming the extra to install.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

from ..errors import MissingDependencyError
from .base import Batch, CollectionInfo, Connector
from .uri import CollectionURI, parse_uri, register_schemes


class Engine(NamedTuple):
    """What the registry knows of an engine without importing it (importing a
    connector imports its engine's package): where its connector lives, the pip
    extra and package it needs, and the URI schemes it answers to with their shape
    (see uri.py). Everything else about the engine is its connector class's."""

    module: str
    cls: str
    extra: str
    needs: str
    schemes: dict


REGISTRY = {
    "qdrant": Engine("embedmigrate.connectors.qdrant", "QdrantConnector", "qdrant", "qdrant_client",
                     {"qdrant": "server", "qdrants": "server", "qdrant+local": "path",
                      "qdrant+memory": "memory"}),
    "qdrant-edge": Engine("embedmigrate.connectors.qdrant_edge", "QdrantEdgeConnector",
                          "qdrant-edge", "qdrant_edge", {"qdrant+edge": "path"}),
    "chroma": Engine("embedmigrate.connectors.chroma", "ChromaConnector", "chroma", "chromadb",
                     {"chroma": "path", "chroma+http": "server", "chroma+https": "server"}),
    "postgres": Engine("embedmigrate.connectors.postgres", "PostgresConnector", "postgres",
                       "psycopg", {"postgresql": "sql", "postgres": "sql",
                                   "postgresql+psycopg": "sql"}),
}
for _engine, _entry in REGISTRY.items():
    register_schemes(_engine, _entry.schemes)


def connector_class(engine: str) -> type[Connector]:
    entry = REGISTRY[engine]
    try:
        importlib.import_module(entry.needs)
    except ImportError:
        raise MissingDependencyError(entry.needs, entry.extra) from None
    return getattr(importlib.import_module(entry.module), entry.cls)


def open_collection(uri: str | CollectionURI) -> Connector:
    """The connector for the collection a URI names (nothing is contacted yet)."""
    parsed = uri if isinstance(uri, CollectionURI) else parse_uri(uri)
    return connector_class(parsed.engine)(parsed)


__all__ = ["Batch", "CollectionInfo", "Connector", "CollectionURI", "open_collection", "parse_uri"]
