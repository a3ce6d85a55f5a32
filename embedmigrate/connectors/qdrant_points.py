"""Point ids, payload checks, id-range parts and the id reservoir that Qdrant's two
connectors share: the server / local-mode client (qdrant.py) and Qdrant Edge
(qdrant_edge.py). Both engines take the same ids (unsigned 64-bit integers or UUIDs),
scroll in the same order and accept the same payloads. Nothing here imports either
engine's package, so each connector needs only its own.
"""

from __future__ import annotations

import uuid
from typing import Iterable, Sequence

import numpy as np

from ..errors import DataError, NotFoundError, UsageError

MAX_PAYLOAD_DEPTH = 100  # nesting levels of a payload (Qdrant's server parses at most 128)


def select_vector(vectors: dict, wanted: str | None, noun: str, dense_only) -> tuple:
    """Which dense vector to migrate: ``(name or None, params)``. ``vectors`` maps each
    vector's name to its params, the single unnamed vector under the name "";
    ``dense_only(params, name)`` refuses what cannot be translated (each engine's
    params have their own shape); ``noun`` is "collection" or "shard"."""
    if set(vectors) == {""}:
        if wanted:
            raise NotFoundError(f"this {noun} has a single unnamed vector, not '{wanted}'",
                                "remove ?vector=... from the URI")
        return None, dense_only(vectors[""], None)
    names = sorted(vectors)
    if not names:
        raise UsageError(f"this {noun} has no dense vectors (sparse vectors only)",
                         f"embedmigrate migrates dense vectors; pick a {noun} that has them")
    if wanted is None and len(names) > 1:
        raise UsageError(f"the {noun} has several named vectors: {', '.join(names)}",
                         f"choose one with ?vector=NAME, e.g. ?vector={names[0]}")
    name = wanted if wanted is not None else names[0]
    if name not in vectors:
        raise NotFoundError(f"the {noun} has no vector named '{name}'",
                            f"use ?vector= with one of: {', '.join(names)}")
    return name, dense_only(vectors[name], name)


def point_ids(ids: Sequence) -> list:
    """Qdrant point ids (unsigned ints or UUID strings), checked before anything is written."""
    out = []
    for i in ids:
        if isinstance(i, (int, np.integer)) and not isinstance(i, bool) and 0 <= i < 2**64:
            out.append(int(i))
            continue
        try:
            out.append(str(uuid.UUID(str(i))) if not isinstance(i, uuid.UUID) else str(i))
        except ValueError:
            raise DataError(f"id {i!r} is neither an unsigned 64-bit integer nor a UUID",
                            "Qdrant point ids must be unsigned integers or UUIDs: map the source "
                            "ids to UUIDs (e.g. uuid5) before writing to Qdrant") from None
    return out


def check_depth(payloads: Sequence[dict], limit: int = MAX_PAYLOAD_DEPTH) -> None:
    """Refuse payloads nested deeper than ``limit`` before anything is written (the
    server's JSON parser stops at 128 levels; local mode would overflow Python's stack)."""
    for k, payload in enumerate(payloads):
        stack = [(payload, 1)]
        while stack:
            value, depth = stack.pop()
            if depth > limit:
                raise DataError(f"payload of point #{k} is nested more than {limit} levels deep",
                                "flatten that payload field before migrating")
            if isinstance(value, dict):
                stack += [(v, depth + 1) for v in value.values()]
            elif isinstance(value, (list, tuple)):
                stack += [(v, depth + 1) for v in value]


def fields_seen(payloads: Sequence[dict]) -> tuple[list[str], list[str]]:
    """Top-level payload keys, and those holding text (a string in most points that have them)."""
    present: dict[str, int] = {}
    strings: dict[str, int] = {}
    for payload in payloads:
        for key, value in (payload or {}).items():
            present[key] = present.get(key, 0) + 1
            strings[key] = strings.get(key, 0) + isinstance(value, str)
    fields = sorted(present)
    return fields, [k for k in fields if strings[k] * 2 > present[k]]


def id_order(point_id) -> tuple:
    """Qdrant's scroll order: integer ids first, then UUIDs (their canonical lowercase
    strings sort like the 128-bit numbers the server compares)."""
    if isinstance(point_id, int):
        return (0, point_id, "")
    return (1, 0, str(uuid.UUID(str(point_id))))


def part_bounds(part) -> tuple:
    """``(from, to)`` of a part that ``partitions()`` returned (None: open end)."""
    from .base import id_range_bounds
    return id_range_bounds(part, "Qdrant")


def id_range_parts(sampled_ids: list, n: int) -> list:
    """At most ``n`` id ranges cut at quantiles of a uniform sample of ids (the last
    one open-ended, so points added later land in it); ``[None]`` (all) when the
    sample cannot be cut."""
    from .base import quantile_positions
    ids = sorted(sampled_ids, key=id_order)
    if n <= 1 or len(ids) < 2:
        return [None]
    cuts = [ids[pos] for pos in quantile_positions(len(ids), n)[1:]]
    bounds = [None, *dict.fromkeys(cuts), None]
    return [{"from": a, "to": b} for a, b in zip(bounds, bounds[1:])]


def reservoir(id_pages: Iterable[list], n: int, seed: int) -> list:
    """A seeded uniform sample of ``n`` ids from pages of ids (Algorithm R, vectorised
    per page): O(n) memory, one pass."""
    rng = np.random.default_rng(seed)
    chosen: list = []
    seen = 0
    for ids in id_pages:
        fill = min(n - len(chosen), len(ids))
        chosen += ids[:fill]
        rest = ids[fill:]
        if rest:
            position = seen + fill + np.arange(len(rest))  # index of each id in the stream
            slots = rng.integers(0, position + 1)
            for k in np.flatnonzero(slots < n):  # in stream order: later ids win a slot
                chosen[slots[k]] = rest[k]
        seen += len(ids)
    return chosen
