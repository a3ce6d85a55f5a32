"""Collection URIs, parsed in one place.

    qdrant://host:6333/collection            (qdrants:// for TLS; API key from QDRANT_API_KEY)
    qdrant+local:///path/to/storage/collection
    qdrant+memory:///collection              (one in-process store, for tests)
    chroma:///path/to/persist/collection     (embedded PersistentClient)
    chroma+http://host:8000/collection       (?tenant=...&database=..., chroma+https for TLS)
    postgresql://user@host:5432/db?table=docs&column=embedding&id=id
                                             (any SQLAlchemy postgres URL; ?host=/dir for sockets)

A URI names one collection. ``with_collection`` derives the URI of a sibling
collection (the migration target) on the same store.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from ..errors import UsageError

SCHEMES = {
    "qdrant": "qdrant", "qdrants": "qdrant", "qdrant+local": "qdrant", "qdrant+memory": "qdrant",
    "chroma": "chroma", "chroma+http": "chroma", "chroma+https": "chroma",
    "postgresql": "postgres", "postgres": "postgres", "postgresql+psycopg": "postgres",
}


@dataclass(frozen=True)
class CollectionURI:
    """A parsed collection URI.

    ``location`` is what the engine needs to connect: ``host:port`` for
    servers, a filesystem path for embedded stores, a database name for
    Postgres. ``collection`` is the collection / table name. ``options`` holds
    the query string (minus the parts that name the collection).
    """

    raw: str
    scheme: str
    engine: str
    collection: str
    host: str | None = None
    port: int | None = None
    path: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    database: str | None = None
    options: dict = field(default_factory=dict)

    def with_collection(self, name: str) -> "CollectionURI":
        return replace(self, collection=name, raw=_rebuild(self, name))

    def without_password(self) -> str:
        """The URI with no password at all: what plans and state files store
        (the password comes from PGPASSWORD / .pgpass / the engine's env at run time)."""
        return _rebuild(replace(self, password=None), self.collection)

    def redacted(self) -> str:
        """The URI with any password removed: safe to print, log or store."""
        return _rebuild(self, self.collection, redact=True)

    def __str__(self) -> str:  # never leak a password through str()
        return self.redacted()


def parse_uri(uri: str) -> CollectionURI:
    if not isinstance(uri, str) or "://" not in uri:
        raise UsageError(f"'{uri}' is not a collection URI",
                         "use e.g. qdrant://host:6333/docs, chroma:///data/chroma/docs "
                         "or postgresql://user@host/db?table=docs")
    scheme = uri.split("://", 1)[0].lower()
    engine = SCHEMES.get(scheme)
    if engine is None:
        raise UsageError(f"unknown URI scheme '{scheme}://'",
                         "use one of " + ", ".join(f"{s}://" for s in SCHEMES))
    parts = urlsplit(uri)
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    if engine == "postgres":
        return _parse_postgres(uri, scheme, parts, options)
    if scheme in ("qdrant+local", "qdrant+memory", "chroma"):
        # everything after the last slash is the collection, the rest is the store path
        full = unquote(parts.netloc + parts.path) if scheme != "qdrant+memory" else unquote(parts.path)
        store, _, name = full.rstrip("/").rpartition("/")
        if not name:
            raise UsageError(f"'{_strip_password(uri)}' names no collection",
                             f"end the URI with the collection name, e.g. {scheme}:///data/store/docs")
        if scheme == "qdrant+memory":
            store = None
        elif not store:
            raise UsageError(f"'{_strip_password(uri)}' names no storage folder",
                             f"use {scheme}:///path/to/storage/{name}")
        return CollectionURI(raw=uri, scheme=scheme, engine=engine, collection=name,
                             path=store, options=options)
    # servers: qdrant, qdrants, chroma+http(s)
    name = unquote(parts.path).strip("/")
    if not name or "/" in name:
        raise UsageError(f"'{_strip_password(uri)}' must name exactly one collection after the host",
                         f"use {scheme}://host:port/collection")
    if not parts.hostname:
        raise UsageError(f"'{_strip_password(uri)}' names no host", f"use {scheme}://host:port/{name}")
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"'{_strip_password(uri)}' has an invalid port",
                         f"use {scheme}://host:PORT/{name} with a number") from None
    return CollectionURI(raw=uri, scheme=scheme, engine=engine, collection=name,
                         host=parts.hostname, port=port, username=parts.username,
                         password=parts.password, options=options)


def _parse_postgres(uri, scheme, parts, options) -> CollectionURI:
    table = options.pop("table", None)
    if not table:
        raise UsageError(f"'{_strip_password(uri)}' names no table",
                         "add ?table=NAME (and &column=VECTOR_COLUMN&id=KEY_COLUMN if not "
                         "'embedding' and 'id')")
    database = unquote(parts.path.lstrip("/")) or None
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"'{_strip_password(uri)}' has an invalid port",
                         "use postgresql://user@host:PORT/db?table=...") from None
    return CollectionURI(raw=uri, scheme=scheme, engine="postgres", collection=table,
                         host=parts.hostname, port=port,
                         username=unquote(parts.username) if parts.username else None,
                         password=unquote(parts.password) if parts.password else None,
                         database=database, options=options)


def _strip_password(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _rebuild(u: CollectionURI, name: str, redact: bool = False) -> str:
    query = dict(u.options)
    if u.engine == "postgres":
        query = {"table": name, **query}
        auth = ""
        if u.username:
            auth = quote(u.username, safe="")
            if u.password:
                auth += ":" + ("***" if redact else quote(u.password, safe=""))
            auth += "@"
        hostport = (u.host or "") + (f":{u.port}" if u.port else "")
        base = f"{u.scheme}://{auth}{hostport}/{quote(u.database or '', safe='')}"
    elif u.scheme == "qdrant+memory":
        base = f"{u.scheme}:///{quote(name)}"
    elif u.path is not None:
        base = f"{u.scheme}://{quote(u.path)}/{quote(name)}"
    else:
        auth = ""
        if u.username:
            auth = quote(u.username, safe="") + (":" + ("***" if redact else quote(u.password, safe=""))
                                                 if u.password else "") + "@"
        base = f"{u.scheme}://{auth}{u.host}" + (f":{u.port}" if u.port else "") + f"/{quote(name)}"
    return base + ("?" + urlencode(query) if query else "")
