"""Collection URIs, parsed in one place, by the *shape* of the URI; which engine a
scheme belongs to, and its shape, each engine declares in its registry entry
(connectors/__init__.py). The shapes:

    server   scheme://[user:password@]host:port/collection?options
             (qdrant://, qdrants://, chroma+http://, chroma+https://)
    path     scheme:///path/to/store/collection: the last segment is the collection,
             the rest the store's directory (qdrant+local://, qdrant+edge://, chroma://)
    memory   scheme:///collection: a store inside the process (qdrant+memory://)
    sql      any SQLAlchemy-style database URL naming the table in ?table=
             (postgresql://user@host:5432/db?table=docs&column=embedding&id=id;
             ?host=/dir for sockets)

A URI names one collection. ``with_collection`` derives the URI of a sibling
collection (the migration target) on the same store.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from ..errors import UsageError
from ..redact import SECRET_OPTIONS  # one list of secret options (redact.py); credentials re-exports it
from ..redact import scrub_secrets as _strip_password  # the URI, safe to put in an error

URI_SHAPES = ("server", "path", "memory", "sql")
# scheme -> engine, and scheme -> URI shape: filled by register_schemes() for every
# engine of connectors/__init__.py's registry
SCHEMES: dict[str, str] = {}
SHAPES: dict[str, str] = {}


def register_schemes(engine: str, schemes: dict[str, str]) -> None:
    """Let ``parse_uri`` hand URIs of these schemes (scheme -> shape) to ``engine``."""
    for scheme, shape in schemes.items():
        if shape not in URI_SHAPES:
            raise ValueError(f"unknown URI shape {shape!r} for {scheme}://")
        SCHEMES[scheme], SHAPES[scheme] = engine, shape


@dataclass(frozen=True)
class CollectionURI:
    """A parsed collection URI.

    ``location`` is what the engine needs to connect: ``host:port`` for
    servers, a filesystem path for embedded stores, a database name for
    Postgres. ``collection`` is the collection / table name. ``options`` holds
    the query string (minus the parts that name the collection).
    """

    raw: str = field(repr=False)  # may hold the password
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
        public = {k: v for k, v in self.options.items() if k not in SECRET_OPTIONS}
        return _rebuild(replace(self, password=None, options=public), self.collection)

    def redacted(self) -> str:
        """The URI with any password removed: safe to print, log or store."""
        return _rebuild(self, self.collection, redact=True)

    def __str__(self) -> str:  # never leak a password through str()
        return self.redacted()

    def __repr__(self) -> str:  # nor through repr() (tracebacks, debug logs)
        return f"CollectionURI({self.redacted()!r})"


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
    try:
        uri.encode("utf-8")
    except UnicodeEncodeError:  # argv turns non-UTF-8 bytes into lone surrogates
        raise UsageError(f"the URI {_strip_password(uri)!a} holds bytes that are not UTF-8",
                         "type the URI again; percent-encode special characters") from None
    try:
        parts = urlsplit(uri)
        parts.hostname  # noqa: B018 - validates a bracketed [IPv6] host
    except ValueError as e:  # e.g. an unclosed '[' or a bracketed host that is no IP address
        raise UsageError(f"'{_strip_password(uri)}' is not a valid URI: {e}",
                         f"use {scheme}://host:port/... (IPv6 hosts in brackets: [::1])") from None
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    shape = SHAPES[scheme]
    if shape == "sql":
        parsed = _parse_sql(uri, scheme, engine, parts, options)
    elif shape in ("path", "memory"):
        parsed = _parse_local(uri, scheme, engine, parts, options)
    else:
        parsed = _parse_server(uri, scheme, engine, parts, options)
    _refuse_nul(parsed)
    return parsed


def _parse_local(uri, scheme, engine, parts, options) -> CollectionURI:
    # everything after the last slash is the collection, the rest is the store path
    memory = SHAPES[scheme] == "memory"
    full = unquote(parts.path) if memory else unquote(parts.netloc + parts.path)
    store, _, name = full.rstrip("/").rpartition("/")
    if not name:
        raise UsageError(f"'{_strip_password(uri)}' names no collection",
                         f"end the URI with the collection name, e.g. {scheme}:///data/store/docs")
    if memory:
        store = None
    elif not store:
        raise UsageError(f"'{_strip_password(uri)}' names no storage folder",
                         f"use {scheme}:///path/to/storage/{name}")
    return CollectionURI(raw=uri, scheme=scheme, engine=engine, collection=name,
                         path=store, options=options)


def _parse_server(uri, scheme, engine, parts, options) -> CollectionURI:
    """scheme://host:port/collection (qdrant, qdrants, chroma+http(s))."""
    name = unquote(parts.path).strip("/")
    if not name or "/" in name:
        raise UsageError(f"'{_strip_password(uri)}' must name exactly one collection after the host",
                         f"use {scheme}://host:port/collection")
    if not parts.hostname:
        raise UsageError(f"'{_strip_password(uri)}' names no host", f"use {scheme}://host:port/{name}")
    port = _port(uri, parts, f"use {scheme}://host:PORT/{name} with a number")
    return CollectionURI(raw=uri, scheme=scheme, engine=engine, collection=name,
                         host=_host(uri, parts), port=port, **_credentials(parts), options=options)


def _parse_sql(uri, scheme, engine, parts, options) -> CollectionURI:
    """A database URL with ?table= (postgresql)."""
    table = options.pop("table", None)
    if not table:
        raise UsageError(f"'{_strip_password(uri)}' names no table",
                         "add ?table=NAME (and &column=VECTOR_COLUMN&id=KEY_COLUMN if not "
                         "'embedding' and 'id')")
    database = unquote(parts.path.lstrip("/")) or None
    port = _port(uri, parts, "use postgresql://user@host:PORT/db?table=...")
    return CollectionURI(raw=uri, scheme=scheme, engine=engine, collection=table,
                         host=_host(uri, parts), port=port, **_credentials(parts),
                         database=database, options=options)


def _port(uri: str, parts, fix: str) -> int | None:
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:  # out of range, not a number, or 0 (which no server listens on)
        raise UsageError(f"'{_strip_password(uri)}' has an invalid port", fix)
    return port


def _host(uri: str, parts) -> str | None:
    host = parts.hostname
    if host and ":" in host and "[" not in parts.netloc:
        # 'a:b:5432': the host would be 'a:b', which only an IPv6 address in brackets can be
        raise UsageError(f"'{_strip_password(uri)}' has an invalid host '{host}'",
                         "write IPv6 addresses in brackets, e.g. [::1]:6333")
    return host


def _credentials(parts) -> dict:
    """username and password, percent-decoded; an empty one counts as none."""
    return {"username": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None}


def _refuse_nul(u: CollectionURI) -> None:
    """A NUL (e.g. %00) can name no file, table or server: refuse it here, not deep in libpq."""
    values = [u.collection, u.host, u.path, u.username, u.password, u.database,
              *u.options, *u.options.values()]
    if any(v and "\x00" in v for v in values):
        raise UsageError(f"'{_strip_password(u.raw)}' holds a NUL character (%00)",
                         "remove the %00 from the URI")


def _rebuild(u: CollectionURI, name: str, redact: bool = False) -> str:
    query = {k: "***" if redact and k in SECRET_OPTIONS else v for k, v in u.options.items()}
    shape = SHAPES.get(u.scheme)
    if shape == "sql":
        query = {"table": name, **query}
        base = f"{u.scheme}://{_netloc(u, redact)}/{quote(u.database or '', safe='')}"
    elif shape == "memory":
        base = f"{u.scheme}:///{quote(name)}"
    elif u.path is not None:
        base = f"{u.scheme}://{quote(u.path)}/{quote(name)}"
    else:
        base = f"{u.scheme}://{_netloc(u, redact)}/{quote(name)}"
    return base + ("?" + urlencode(query, safe="*") if query else "")


def _netloc(u: CollectionURI, redact: bool) -> str:
    auth = ""
    if u.username or u.password:  # ":pw@host": the default user with a password
        auth = quote(u.username or "", safe="")
        if u.password:
            auth += ":" + ("***" if redact else quote(u.password, safe=""))
        auth += "@"
    host = f"[{u.host}]" if u.host and ":" in u.host else (u.host or "")
    return auth + host + (f":{u.port}" if u.port else "")
