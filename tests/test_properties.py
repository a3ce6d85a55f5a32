"""Property-based tests (hypothesis) for bad input: collection URIs, plan files and
vector batches written through the real connectors.

The properties are the project's promise about bad input: either the thing is
accepted and then behaves (a URI round-trips, a plan loads, a batch reads back
exactly as written), or it is refused with an ``EmbedMigrateError`` whose message
is one line naming the fix, and nothing was written. Never another exception.

Examples that once broke a property are kept as explicit ``@example``s.
"""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from embedmigrate.connectors import open_collection, parse_uri
from embedmigrate.connectors.uri import SCHEMES, CollectionURI
from embedmigrate.errors import EmbedMigrateError

FAST = settings(max_examples=300, deadline=None)


def one_line(err: EmbedMigrateError) -> None:
    text = str(err)
    assert "\n" not in text and "\r" not in text, text
    assert err.fix, f"no fix named: {text}"


# --- collection URIs -----------------------------------------------------------------

# a password that cannot appear by chance anywhere else in a generated URI
SECRET = "Zq9!sEcReT"
SECRET_CHARS = SECRET + "@:/?#%& "
SERVER_SCHEMES = ("qdrant", "qdrants", "chroma+http", "chroma+https")
LOCAL_SCHEMES = ("qdrant+local", "chroma")
POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
OPTION_KEYS = ("table", "password", "api_key", "column", "id", "schema", "host", "tenant", "database", "timeout",
               "retries", "vector", "max_request_mb", "grpc_port", "https", "prefer_grpc",
               "connect_timeout", "sslmode", "token_env", "api_key_env", "application_name")

# every kind of character a hand-typed or generated URI may hold: URL syntax,
# percent escapes, whitespace, NUL, non-ASCII, and lone surrogates (what Python
# makes of non-UTF-8 bytes in argv)
nasty_char = st.sampled_from(list(":/@?#[]%&=+;, \t\n\x00.~-_") + ["%00", "%2F", "%40", "%zz",
                                                                   "é", "\u202e", "\ud800",
                                                                   "\udcff", "ﬀ", "::1"])
plain_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00/"), max_size=12)
word = st.text(string.ascii_letters + string.digits + "._-", min_size=1, max_size=12)
fuzzy = st.lists(st.one_of(word, nasty_char, plain_text), max_size=6).map("".join)

host = st.one_of(st.just("localhost"), st.just("127.0.0.1"), st.just("[::1]"),
                 st.just("[fe80::1%25eth0]"), st.just("Db.Example.COM"), word, fuzzy)
port = st.one_of(st.none(), st.integers(-1, 70_000).map(str), fuzzy)
userinfo = st.one_of(
    st.none(), word, st.builds(lambda u, p: f"{u}:{p}", st.one_of(word, st.just("")),
                               st.sampled_from([SECRET, SECRET.replace("!", "%21"),
                                                "".join(f"%{ord(c):02X}" for c in SECRET_CHARS)])))
options = st.dictionaries(st.one_of(st.sampled_from(OPTION_KEYS), fuzzy),
                          st.one_of(word, fuzzy, st.integers(-5, 10**6).map(str)), max_size=4)
path = st.lists(st.one_of(word, fuzzy), max_size=4).map("/".join)


@st.composite
def structured_uris(draw) -> str:
    """URIs in the shape of every scheme, with odd but plausible parts."""
    scheme = draw(st.sampled_from(sorted(SCHEMES)))
    if draw(st.booleans()):
        scheme = scheme.upper()
    auth = draw(userinfo)
    netloc = ((auth + "@") if auth is not None else "") + draw(host)
    p = draw(port)
    if p is not None:
        netloc += ":" + p
    if scheme.lower() in LOCAL_SCHEMES + ("qdrant+memory",) and draw(st.booleans()):
        netloc = ""  # scheme:///absolute/path/collection
    query = draw(options)
    if scheme.lower() in POSTGRES_SCHEMES and draw(st.booleans()):
        query["table"] = draw(word)
    text = f"{scheme}://{netloc}/{draw(path)}"
    if query:
        text += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    if draw(st.booleans()):
        text += "#" + draw(fuzzy)
    return text


@st.composite
def mutated(draw, base) -> str:
    """A URI with a few characters deleted, replaced or inserted, or cut short."""
    text = draw(base)
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["delete", "insert", "replace", "truncate"]))
        if action == "truncate":
            text = text[:i]
        elif action == "delete":
            text = text[:i] + text[i + 1:]
        else:
            ch = draw(nasty_char)
            text = text[:i] + ch + text[i + (action == "replace"):]
    return text


uris = st.one_of(structured_uris(), mutated(structured_uris()), st.text(max_size=40),
                 st.builds(lambda s, rest: f"{s}://{rest}", st.sampled_from(sorted(SCHEMES)),
                           st.text(max_size=30)))


# query options holding a credential: stored URIs leave them out, printed ones show ***
SECRET_OPTIONS = ("password", "sslpassword", "api_key", "token")


def same_place(a: CollectionURI, b: CollectionURI) -> bool:
    """Two parsed URIs name the same collection on the same store (credentials aside)."""
    keys = ("scheme", "engine", "collection", "host", "port", "path", "username", "database")

    def public(options):
        return {k: v for k, v in options.items() if k not in SECRET_OPTIONS}
    return all(getattr(a, k) == getattr(b, k) for k in keys) and \
        public(a.options) == public(b.options)


def has_credentials(text: str) -> bool:
    """Whether SECRET is the password of a login in this URI (not, after a mutation,
    part of a host or path; embedded stores read user:password@ as a path)."""
    scheme = text.split("://", 1)[0].lower()
    return scheme in SERVER_SCHEMES + POSTGRES_SCHEMES and bool(
        re.search(r"://[^/?#]*:[^/?#]*sEcReT[^/?#]*@", text))


def check_uri(text: str) -> CollectionURI | None:
    """The URI property; returns the parsed URI when it was accepted."""
    try:
        u = parse_uri(text)
    except EmbedMigrateError as e:
        one_line(e)
        if has_credentials(text):
            assert "sEcReT" not in str(e), str(e)
        return None
    assert u.engine == SCHEMES[u.scheme] and u.collection
    stored, shown = u.without_password(), u.redacted()
    if u.password and "sEcReT" in u.password:
        for safe in (stored, shown, str(u), repr(u)):
            assert "sEcReT" not in safe, safe
    again = parse_uri(stored)
    assert same_place(again, u) and again.password is None, (stored, u, again)
    assert same_place(parse_uri(shown), u)
    assert parse_uri(shown).password in (None, "***")
    if u.password:
        assert same_place(parse_uri(u.raw), u)
    return u


@FAST
@given(uris)
@example("qdrant://[abc/x")  # urlsplit's ValueError escaped as a traceback
@example("qdrant://[zz]/x")
@example("qdrant://[::1]:6333/docs")  # rebuilt without brackets: qdrant://::1:6333/docs
@example("qdrant://us%40er:p%40ss@db/docs")  # username double-escaped on every rebuild
@example("qdrant+local:///data/\udcff/docs")  # a lone surrogate crashed quote()
@example("qdrant://db/docs?a=\udcff")
@example("qdrant://db:0/docs")  # port 0 silently became the default port
@example("chroma+http://:@db/docs")
@example("postgresql://u:Zq9!sEcReT@[x/db?table=t")  # the error message must hide the password
def test_parse_uri_round_trips_or_refuses_in_one_line(text):
    check_uri(text)


collection_names = st.text(st.characters(codec="utf-8", exclude_characters="/\x00"),
                           min_size=1, max_size=20)


@FAST
@given(structured_uris(), collection_names)
def test_with_collection_names_a_sibling_on_the_same_store(text, name):
    u = check_uri(text)
    if u is None:
        return
    sibling = u.with_collection(name)
    assert sibling.collection == name and sibling.password == u.password
    again = parse_uri(sibling.raw)
    assert again.collection == name
    assert same_place(again, sibling) and again.password == u.password
