"""Property-based tests (hypothesis) for bad input: collection URIs, plan files and
vector batches written through the real connectors.

The properties are the project's promise about bad input: either the thing is
accepted and then behaves (a URI round-trips, a plan loads, a batch reads back
exactly as written), or it is refused with an ``EmbedMigrateError`` whose message
is one line naming the fix, and nothing was written. Never another exception.

Examples that once broke a property are kept as explicit ``@example``s.
"""

from __future__ import annotations

import datetime
import itertools
import json
import math
import os
import re
import reprlib
import string
import subprocess
import sys
from urllib.parse import quote

import numpy as np
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, example, given, settings
from hypothesis import strategies as st

from embedmigrate.connectors import Batch, open_collection, parse_uri
from embedmigrate.connectors.uri import SCHEMES, SECRET_OPTIONS, CollectionURI
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
OPTION_KEYS = ("table", "password", "api_key", "column", "id", "schema", "host", "tenant",
               "database", "timeout", "retries", "vector", "max_request_mb", "grpc_port", "https",
               "prefer_grpc", "connect_timeout", "sslmode", "token_env", "api_key_env",
               "application_name")

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


def same_place(a: CollectionURI, b: CollectionURI) -> bool:
    """Two parsed URIs name the same collection on the same store (credentials aside:
    stored URIs leave secret query options out, printed ones show ***)."""
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


# --- open_collection on URIs that point at nothing -------------------------------------

CONNECTOR_OPTIONS = ("timeout", "max_request_mb", "grpc_port", "prefer_grpc", "https", "vector",
                     "api_key_env", "tenant", "database", "token_env", "token_header",
                     "connect_timeout", "sslmode", "column", "id", "schema", "retry_delay",
                     "password_file", "password_env", "application_name")
option_values = st.one_of(st.sampled_from(["", "0", "-1", "1", "nan", "inf", "-inf", "1e9", "true",
                                           "abc", "PATH", "é", "10" * 12]), fuzzy)
connector_options = st.dictionaries(st.one_of(st.sampled_from(CONNECTOR_OPTIONS), word),
                                    option_values, max_size=4)


@pytest.fixture(scope="module")
def nowhere(tmp_path_factory):
    """A closed local TCP port and a folder that holds no store."""
    from harness_qdrant import closed_port
    return closed_port(), tmp_path_factory.mktemp("nowhere") / "missing"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scheme=st.sampled_from(["qdrant", "qdrants", "chroma+http", "chroma+https", "postgresql",
                               "qdrant+local", "chroma"]),
       opts=connector_options, collection=word)
@example(scheme="qdrant", opts={"max_request_mb": "abc"}, collection="docs")
@example(scheme="qdrant", opts={"grpc_port": "abc", "prefer_grpc": "true"}, collection="docs")
@example(scheme="chroma+http", opts={"timeout": "nan"}, collection="docs")
def test_open_collection_on_nothing_fails_in_one_line(nowhere, scheme, opts, collection):
    port, folder = nowhere
    # no retries and short timeouts: a refused local port answers at once
    fixed = {"retries": "0", "timeout": "1", "connect_timeout": "1"}
    query = "&".join(f"{quote(k, safe='', errors='surrogatepass')}="
                     f"{quote(v, safe='', errors='surrogatepass')}"
                     for k, v in {**opts, **fixed}.items())
    if scheme in ("qdrant+local", "chroma"):
        text = f"{scheme}://{folder}/{collection}?{query}"
    elif scheme == "postgresql":
        text = f"postgresql://user:sEcReT@127.0.0.1:{port}/db?table={collection}&{query}"
    else:
        text = f"{scheme}://user:sEcReT@127.0.0.1:{port}/{collection}?{query}"
    for call in (lambda c: c.exists(), lambda c: c.describe()):
        try:
            with open_collection(text) as conn:
                answer = call(conn)
        except EmbedMigrateError as e:
            one_line(e)
            assert "sEcReT" not in str(e), str(e)
        else:
            assert answer is False, f"{text} found a collection: {answer}"


# --- plan files --------------------------------------------------------------------------

def valid_plan() -> dict:
    """A plan that loads (what `embedmigrate plan` writes, trimmed)."""
    return {
        "source": {"uri": "qdrant+memory:///props_src", "count": 100, "dim": 8,
                   "metric": "cosine", "text_field": "text"},
        "target": {"uri": "qdrant+memory:///props_dst", "live_name": "props_live"},
        "model": {"new": "minilm", "old": ""},
        "sample": {"old": 100, "new": 0, "texts": "", "text_column": "", "pairs": 50,
                   "holdout": 10, "seed": 0},
        "train": {"method": "auto", "checkpoint": "ckpt", "options": {"seed": 1}},
        "apply": {"batch_size": 64, "if_exists": "error"},
        "gate": {"thresholds": {"min_top1": 0.4}, "sample": 100, "queries": ""},
        "estimate": {"apply_minutes": 0.1},
    }


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # JSON's escapes are valid TOML ones
    if isinstance(v, (datetime.datetime, datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def to_toml(doc: dict) -> str:
    """A small TOML writer for generated plans (tables of scalars, inline tables inside)."""
    top = [f"{toml_key(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    tables = []
    for name, table in doc.items():
        if isinstance(table, dict):
            tables.append(f"[{toml_key(name)}]")
            tables += [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(top + tables) + "\n"


THRESHOLD_NAMES = ("require_aligned", "min_top1", "warn_top1", "max_cycle_error",
                   "warn_cycle_error", "min_overlap_at_k", "warn_overlap_at_k")
toml_scalars = st.one_of(
    st.integers(-2**63, 2**63 - 1), st.integers(-3, 3), st.floats(), st.booleans(),
    st.text(st.characters(codec="utf-8"), max_size=12), st.datetimes(), st.dates(), st.times())
toml_any = st.one_of(toml_scalars, st.lists(toml_scalars, max_size=3),
                     st.dictionaries(word, toml_scalars, max_size=2))
safe_uris = uris.filter(lambda u: not re.search("[\ud800-\udfff]", u))


def bad_value(section: str, key: str):
    """A value of the right type but a wrong content, where there is one."""
    return {
        "uri": safe_uris, "method": st.sampled_from(["", "best", "AUTO", "vec2vec "]),
        "if_exists": st.sampled_from(["", "overwrite", "Resume"]),
        "metric": st.sampled_from(["", "euclid", "COSINE"]),
        "thresholds": st.dictionaries(st.one_of(st.sampled_from(THRESHOLD_NAMES), word),
                                      toml_any, max_size=3),
        "options": st.dictionaries(st.one_of(st.sampled_from(["seed", "holdout", "many_pairs",
                                                              "config", "epochs"]), word),
                                   toml_any, max_size=3),
    }.get(key, st.one_of(st.integers(-2**63, 0), st.integers(10**12, 2**63 - 1), st.just(""),
                         st.just(" ")))


@st.composite
def plan_documents(draw) -> bytes:
    """A valid plan with a few things broken, as the bytes of a file."""
    doc = valid_plan()
    for _ in range(draw(st.integers(0, 3))):
        section = draw(st.sampled_from(sorted(doc) + ["bogus"]))
        action = draw(st.sampled_from(["drop_section", "drop_key", "unknown_key", "retype",
                                       "bad_value", "not_a_table"]))
        table = doc.get(section)
        if action == "drop_section" or section == "bogus":
            if section == "bogus":
                doc["bogus"] = {"x": 1}
            else:
                del doc[section]
        elif action == "not_a_table":
            doc[section] = draw(toml_scalars)
        elif not isinstance(table, dict) or not table:
            continue
        else:
            key = draw(st.sampled_from(sorted(table)))
            if action == "drop_key":
                del table[key]
            elif action == "unknown_key":
                table[draw(word)] = draw(toml_any)
            elif action == "retype":
                table[key] = draw(toml_any)
            else:
                table[key] = draw(bad_value(section, key))
    data = to_toml(doc).encode("utf-8")
    if draw(st.booleans()):  # byte damage: non-UTF-8, NUL, BOM, stray syntax, a cut-off file
        for _ in range(draw(st.integers(1, 2))):
            i = draw(st.integers(0, len(data)))
            junk = draw(st.sampled_from([b"", b"\xff", b"\x00", b"\xc3", b"\xef\xbb\xbf", b"[",
                                         b"=", b'"', b"\n[source]\n", b"\r"]))
            data = data[:i] + junk + (b"" if draw(st.booleans()) else data[i:])
    return data


@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("plans")


_plan_files = itertools.count()


def write_plan(folder, data: bytes):
    path = folder / f"plan{next(_plan_files)}.toml"
    path.write_bytes(data)
    return path


def check_plan(path):
    """The plan property; returns the plan when it loaded."""
    from embedmigrate.plan import Plan, load_plan
    from embedmigrate.report import Thresholds
    from embedmigrate.translators import make_translator
    try:
        plan = load_plan(path)
    except EmbedMigrateError as e:
        one_line(e)
        return None
    assert isinstance(plan, Plan)
    # what later steps build from the plan is built without surprises
    Thresholds.from_dict(plan.gate.thresholds)
    make_translator(plan.train.method, **plan.train.options)
    dict(plan.estimate)
    parse_uri(plan.source.uri), parse_uri(plan.target.uri)
    return plan


def plan_bytes(**sections) -> bytes:
    """The valid plan with some sections (or keys of them) replaced, as a file's bytes."""
    doc = valid_plan()
    for name, value in sections.items():
        doc[name] = {**doc[name], **value} if isinstance(value, dict) else value
    return to_toml(doc).encode()


@settings(max_examples=300, deadline=None)
@given(plan_documents())
# each loaded before the fix, then failed later with a traceback (or ran with nonsense)
@example(plan_bytes(estimate=0))  # dict(plan.estimate) in the dry run: TypeError
@example(plan_bytes(sample={"old": True}))  # a bool passed as a whole number
@example(plan_bytes(sample={"seed": -1}))  # numpy's default_rng: ValueError
@example(plan_bytes(gate={"sample": 0}))
@example(plan_bytes(gate={"thresholds": {"min_top1": "high"}}))  # TypeError at the gate
@example(plan_bytes(gate={"thresholds": {"min_top1": math.nan}}))  # a gate that never fails
@example(plan_bytes(train={"options": {"seed": "1"}}))  # TypeError inside training
@example(plan_bytes(train={"method": "ridge", "options": {"alphas": [0.1, 1.0]}}))  # accepted
@example(plan_bytes(source={"metric": "euclid"}))
def test_plan_file_loads_or_is_refused_in_one_line(plan_dir, data):
    check_plan(write_plan(plan_dir, data))


def test_the_unbroken_plan_loads(plan_dir):
    plan = check_plan(write_plan(plan_dir, to_toml(valid_plan()).encode()))
    assert plan is not None and plan.sample.pairs == 50
    assert plan.gate.thresholds == {"min_top1": 0.4}


def check_cli(path, loads: bool) -> None:
    """`status --json` and `apply --dry-run --json` on a plan: JSON out, no traceback,
    a non-zero exit code for a plan that does not load (the dry run also fails on a
    plan that does: its source collection does not exist)."""
    from click.testing import CliRunner

    from embedmigrate.cli import main
    for args in (["status", str(path), "--json"], ["apply", str(path), "--dry-run", "--json"]):
        result = CliRunner().invoke(main, args)
        assert "Traceback" not in result.output, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            (args, result.exc_info)
        if not loads or args[0] == "apply":
            assert result.exit_code not in (0, 1), (args, result.output)
            answer = json.loads(result.stdout)
            assert answer["exit_code"] == result.exit_code
            assert "\n" not in answer["message"] and answer["fix"], answer
        else:
            assert result.exit_code == 0 and json.loads(result.stdout)["stage"] == "planned"


@settings(max_examples=25, deadline=None)
@given(plan_documents())
def test_cli_reports_a_bad_plan_in_one_line(plan_dir, data):
    path = write_plan(plan_dir, data)
    check_cli(path, loads=check_plan(path) is not None)


def test_cli_process_on_a_plan_that_is_not_utf8(plan_dir):
    """The real process, end to end: one line on stderr, exit code 2 (usage)."""
    data = to_toml(valid_plan()).encode().replace(b"minilm", b"mini\xfflm")
    path = write_plan(plan_dir, data)
    run = subprocess.run([sys.executable, "-m", "embedmigrate.cli", "status", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run
    assert "Traceback" not in run.stderr and run.stderr.startswith("error: "), run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "fix:" in run.stderr


# --- vector batches written through the real connectors ----------------------------------

DIM = 4
PG_COLUMNS = {"title": "text", "n": "bigint", "score": "double precision", "tags": "text[]",
              "meta": "jsonb"}

# Payload values come clean (any UTF-8 text, big strings, nesting, odd floats an engine
# can hold) or dirty (NUL, lone surrogates, NaN/inf, ints beyond 64 bits, nesting deeper
# than any engine takes, values of another type than the column's).
clean_text = st.one_of(st.text(st.characters(codec="utf-8", exclude_characters="\x00"),
                               max_size=8),
                       st.sampled_from(["", "é\u202e", "\U0001F600", "\\", "'", "\n\t"]))
nasty_text = st.one_of(st.text(max_size=8),
                       st.sampled_from(["a\x00b", "\x00", "\ud800", "x\udcff"]))
huge_text = st.sampled_from([1, 2]).map(lambda mb: "x" * (mb * 1024 * 1024))


class Nested(dict):
    """{"d": {"d": ... "bottom"}} ``depth`` levels deep, with a short repr (printing
    it whole would overflow the stack of whoever prints a failing example)."""

    def __init__(self, depth: int):
        value: object = "bottom"
        for _ in range(depth - 1):
            value = {"d": value}
        super().__init__(d=value)
        self.depth = depth

    def __repr__(self) -> str:
        return f"Nested({self.depth})"


nested = Nested


def json_values(clean: bool):
    text = clean_text if clean else nasty_text
    scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**53, 2**53), st.integers(-5, 5),
                       st.floats(allow_nan=False, allow_infinity=False), text)
    if not clean:
        scalar = st.one_of(scalar, st.integers(-2**70, 2**70), st.floats())
    return st.one_of(
        scalar, huge_text,
        st.recursive(scalar, lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(text, inner, max_size=3)), max_leaves=6),
        st.integers(10, 90 if clean else 1500).map(nested))


def qdrant_payloads(clean: bool):
    return st.dictionaries(clean_text if clean else nasty_text, json_values(clean), max_size=3)


def chroma_payloads(clean: bool):
    """Chroma metadata: scalars and non-empty lists of one type (dirty: what it cannot hold)."""
    scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1),
                       st.floats(allow_nan=False, allow_infinity=False), clean_text, huge_text)
    # clean list items are 64-bit ints like the scalars (a bigger one is dirty: Chroma
    # would store it as a float, and the writer refuses it)
    value = st.one_of(scalar, st.lists(st.integers(-2**63, 2**63 - 1), min_size=1, max_size=2),
                      st.lists(clean_text, min_size=1, max_size=2))
    key = st.one_of(word, clean_text.filter(bool))
    if not clean:
        value = st.one_of(value, json_values(False), st.lists(st.integers(), max_size=0),
                          st.lists(st.one_of(st.integers(), st.text()), min_size=2, max_size=2))
        key = st.one_of(key, nasty_text, st.just("#uri"), st.just("chroma:document"))
    return st.dictionaries(key, value, max_size=3)


def postgres_payloads(clean: bool):
    """A whole row, as a Postgres source yields it (title text, n bigint, score double
    precision, tags text[], meta jsonb); dirty: values of another type, unknown columns."""
    text = clean_text if clean else nasty_text
    right = {"title": st.one_of(text, huge_text), "n": st.integers(-2**63, 2**63 - 1),
             "score": st.floats(), "tags": st.lists(st.one_of(st.none(), text), max_size=2),
             "meta": json_values(clean)}
    if clean:
        return st.fixed_dictionaries({k: st.one_of(st.none(), v) for k, v in right.items()})
    wrong = st.one_of(json_values(False), st.integers(-2**70, 2**70), st.booleans())
    row = st.fixed_dictionaries({k: st.one_of(v, wrong) for k, v in right.items()})
    extra = st.dictionaries(st.sampled_from(["unknown", "Title"]), st.integers(), max_size=1)
    return st.tuples(row, extra).map(lambda t: {**t[0], **t[1]})


good_ids = {
    "qdrant": st.one_of(st.integers(0, 40), st.uuids().map(str), st.uuids()),
    "chroma": st.one_of(st.integers(0, 40), word, st.uuids(), st.just("a\x00b")),
    "postgres": st.one_of(st.integers(0, 40), st.integers(2**63 - 3, 2**63 - 1)),
}
bad_ids = {
    "qdrant": st.one_of(st.integers(-3, -1), st.integers(2**64, 2**64 + 2), word,
                        st.sampled_from(["", None, True, 1.5])),
    "chroma": st.sampled_from(["", "\ud800", None]),
    "postgres": st.one_of(st.integers(2**63, 2**64), st.integers(-2**70, -2**63 - 1),
                          st.sampled_from(["7", "abc", "", 1.5, 2.0, None, True, "\ud800"])),
}
payloads_of = {"qdrant": qdrant_payloads, "chroma": chroma_payloads, "postgres": postgres_payloads}


@st.composite
def vectors(draw, n: int, good: bool):
    """Float vectors (zero rows, float64, a list or an array), or, when not ``good``,
    NaN/inf, values beyond float32, a wrong dimension, a flat list, ragged rows, or
    things that are not numbers."""
    values = draw(st.lists(st.lists(st.floats(-10, 10, width=32), min_size=DIM, max_size=DIM),
                           min_size=n, max_size=n))
    if good:
        kind = draw(st.sampled_from(["plain", "plain", "zero", "tiny"]))
    else:
        kind = draw(st.sampled_from(["nan", "inf", "huge", "dim", "flat", "ragged", "text",
                                     "none"]))
    if kind == "dim":
        values = [v + [0.5] for v in values]
    elif kind == "flat":
        return [x for v in values for x in v]
    elif n and kind != "plain":
        row, col = draw(st.integers(0, n - 1)), draw(st.integers(0, DIM - 1))
        if kind == "zero":
            values[row] = [0.0] * DIM
        elif kind == "tiny":
            values[row] = [1e-45, -0.0, 1e-38, 0.0]
        elif kind == "ragged":
            values[row] = values[row][:-1]
        else:
            values[row][col] = {"nan": math.nan, "inf": -math.inf, "huge": 1e39, "text": "0.5",
                                "none": None}[kind]
    if kind not in ("ragged", "text", "none") and draw(st.booleans()):
        with np.errstate(over="ignore"):  # 1e39 -> inf in float32: the writer must refuse it
            return np.asarray(values, dtype=draw(st.sampled_from([np.float32, np.float64])))
    return values


@st.composite
def batches(draw, engine: str):
    """Up to 4 points; at most one thing broken (an id, the vectors, a duplicate id, or
    the payloads)."""
    n = draw(st.integers(0, 4))
    broken = draw(st.sampled_from(["nothing", "nothing", "nothing", "id", "vectors", "duplicate",
                                   "payload", "payload"]))
    ids = draw(st.lists(good_ids[engine], min_size=n, max_size=n, unique_by=str))
    if broken == "id" and n:
        ids[draw(st.integers(0, n - 1))] = draw(bad_ids[engine])
    if broken == "duplicate" and n > 1:
        ids[-1] = ids[0]
    clean = broken != "payload"
    payloads = draw(st.lists(payloads_of[engine](clean), min_size=n, max_size=n))
    documents = None
    if engine == "chroma" and draw(st.booleans()):
        document = st.one_of(st.none(), clean_text, huge_text)
        if not clean:
            document = st.one_of(document, nasty_text, st.integers())
        documents = draw(st.lists(document, min_size=n, max_size=n))
    batch = Batch(ids, draw(vectors(n, good=broken != "vectors")), payloads, documents)
    # nothing broken (or the break had no point to land on): the writer must take it
    no_effect = (broken == "id" and n == 0) or (broken == "duplicate" and n < 2)
    batch.must_write = broken == "nothing" or no_effect
    return batch


class Target:
    """A target collection created by ``create_like``, written by the property test."""

    def __init__(self, harness, name: str):
        self.harness = harness
        self.engine = harness.engine
        self.name = name
        self.conn = open_collection(harness.uri(name))

    def snapshot(self) -> dict:
        """Every point: id -> (vector, payload, document)."""
        points = {}
        with open_collection(self.harness.uri(self.name)) as conn:
            for batch, _ in conn.scan(1000):
                docs = batch.documents or [None] * len(batch)
                for i, v, p, d in zip(batch.ids, batch.vectors, batch.payloads, docs):
                    points[str(i)] = (v.tolist(), p, d)
        return points


def make_target(harness, name: str) -> Target:
    """A source populated by the engine's own client, and a target like it."""
    rng = np.random.default_rng(0)
    src_vectors = rng.normal(size=(3, DIM)).astype(np.float32)
    if harness.engine == "postgres":
        payloads = [{"title": f"t{i}", "n": i, "score": i / 3, "tags": ["a"], "meta": {"k": i}}
                    for i in range(3)]
    else:
        payloads = [{"title": f"t{i}"} for i in range(3)]
    harness.populate(f"{name}_src", [1, 2, 3], src_vectors, payloads, metric="cosine")
    info = open_collection(harness.uri(f"{name}_src")).describe()
    target = Target(harness, name)
    target.conn.create_like(info, dim=DIM)
    return target


@pytest.fixture(scope="module")
def qdrant_target(qdrant_memory_harness):
    return make_target(qdrant_memory_harness, f"props_q_{os.getpid()}")


@pytest.fixture(scope="module")
def chroma_target(chroma_embedded_harness):
    return make_target(chroma_embedded_harness, f"props_c_{os.getpid()}")


@pytest.fixture(scope="module")
def postgres_target(postgres_socket_harness):
    return make_target(postgres_socket_harness, f"props_p_{os.getpid()}")


def same_json(a, b, rel: float = 0.0) -> bool:
    """Equality of payload values where nan equals nan, a bool is no int, an int equals
    the float it reads back as, and floats may differ by ``rel`` (iterative: payloads
    may be nested deeper than Python's recursion limit)."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            continue
        if isinstance(x, dict) and isinstance(y, dict):
            if x.keys() != y.keys():
                return False
            stack += [(x[k], y[k]) for k in x]
        elif isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
            if len(x) != len(y):
                return False
            stack += list(zip(x, y))
        elif isinstance(x, float) and isinstance(y, float) and rel:
            if not math.isclose(x, y, rel_tol=rel):
                return False
        elif {type(x), type(y)} == {int, float}:
            # JSON has one number type: jsonb reads 1.34e17 back as the int 134146403751331460
            if float(x) != float(y):
                return False
        elif x != y or isinstance(x, bool) != isinstance(y, bool):
            return False
    return True


QDRANT_EPSILON = 1.1920929e-7  # f32::EPSILON: Qdrant leaves shorter vectors unnormalised


def expected_vector(engine_normalises: bool, v: np.ndarray) -> np.ndarray:
    """What a cosine collection hands back. Qdrant normalises, except vectors too short
    to have a direction (zero vectors included), which it stores as they are, as the
    server does; Chroma and pgvector store every vector as written."""
    if not engine_normalises:
        return v
    norm = np.linalg.norm(v.astype(np.float64))
    return (v / norm).astype(np.float32) if norm > QDRANT_EPSILON else v


def count(outcome: str) -> None:
    """How examples ended, for --hypothesis-show-statistics."""
    if currently_in_test_context():
        event(outcome)


def check_write(target: Target, batch: Batch, must_write: bool | None = None) -> None:
    """The batch property: refused with nothing written, or read back exactly. A valid
    batch (``must_write``, else what ``batches`` drew it as) must not be refused."""
    if must_write is None:
        must_write = getattr(batch, "must_write", False)
    before = target.snapshot()
    try:
        target.conn.write(batch)
    except EmbedMigrateError as e:
        count(f"refused: {type(e).__name__}")
        one_line(e)
        assert not must_write, f"a valid batch was refused: {e}"
        assert same_json(target.snapshot(), before), "a refused batch changed the collection"
        return
    count(f"written ({'empty' if not len(batch.ids) else 'points'})")
    ids = [str(i) for i in batch.ids]
    got = target.conn.fetch(list(batch.ids))
    assert [str(i) for i in got.ids] == ids
    written = np.asarray(batch.vectors, dtype=np.float32).reshape(len(ids), DIM)
    for k, i in enumerate(ids):
        want = expected_vector(not target.harness.exact_vectors, written[k])
        np.testing.assert_allclose(got.vectors[k], want, rtol=1e-6, atol=1e-7, err_msg=i)
        # Chroma stores some float metadata one ulp off (see test_connectors.float_tolerant)
        rel = 1e-12 if target.engine == "chroma" else 0.0
        assert same_json(got.payloads[k], expected_payload(target, batch.payloads[k]), rel), \
            (i, reprlib.repr(got.payloads[k]), reprlib.repr(batch.payloads[k]))
        if target.engine == "chroma":
            want_doc = batch.documents[k] if batch.documents is not None else None
            got_doc = got.documents[k] if got.documents is not None else None
            assert got_doc == want_doc, (i, got_doc, want_doc)
    after = target.snapshot()
    assert same_json({k: v for k, v in after.items() if k not in ids},
                     {k: v for k, v in before.items() if k not in ids}), "other points changed"


def expected_payload(target: Target, payload: dict) -> dict:
    if target.engine == "postgres":  # every column comes back, NULL as None
        return {c: payload.get(c) for c in PG_COLUMNS}
    if target.engine == "chroma":  # Chroma has no null: a None field reads back absent
        return {k: v for k, v in payload.items() if v is not None}
    return payload


BATCHES = settings(max_examples=40, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


ONE = [[0.1, 0.2, 0.3, 0.4]]


@BATCHES
@given(batch=batches("qdrant"))
# found by this test: each crashed with a traceback or was stored wrongly before the fix
@example(batch=Batch([1, 2], [[1, 2, 3, 4], [1, 2, 3]], [{}, {}]))  # ragged rows: ValueError
@example(batch=Batch([1], [[1, 2, "x", 4]], [{}]))  # not a number: ValueError
@example(batch=Batch([1], ONE, [{"a": nested(1500)}]))  # RecursionError in json.dumps
@example(batch=Batch([1], ONE, [{"a": nested(400)}]))  # RecursionError in local mode's deepcopy
@example(batch=Batch([2**64 + 1], ONE, [{}]))  # stored by local mode, refused by any server
# zero and subnormal vectors in a cosine collection: stored as written (too short to normalise)
@example(batch=Batch([3, 4], [[0, 0, 0, 0], [1e-45, -0.0, 1e-38, 0]], [{}, {}]))
def test_qdrant_writes_a_batch_exactly_or_refuses_it_untouched(qdrant_target, batch):
    check_write(qdrant_target, batch)


@BATCHES
@given(batch=batches("chroma"))
@example(batch=Batch([], [], []))  # Chroma's upsert raised ValueError on an empty batch
@example(batch=Batch([""], ONE, [{}]))  # empty id: InvalidArgumentError
@example(batch=Batch([1], ONE, [{"": 1}]))  # empty metadata key: InvalidArgumentError
@example(batch=Batch([1], ONE, [{"#uri": False}]))  # a URI that is not text
@example(batch=Batch([1], ONE, [{"a": "\udcff"}]))  # lone surrogate: TypeError in the binding
@example(batch=Batch([1], ONE, [{}], ["\ud800"]))  # ... in a document: UnicodeEncodeError
@example(batch=Batch([1], ONE, [{}], [5]))  # a document that is not text: ValueError
@example(batch=Batch([1], ONE, [{"a": 2**70}]))  # was stored silently as the float 1.18e21
@example(batch=Batch([1], ONE, [{"a": math.nan}]))  # was dropped silently
def test_chroma_writes_a_batch_exactly_or_refuses_it_untouched(chroma_target, batch):
    check_write(chroma_target, batch)


def pg_row(**values):
    return {**{c: None for c in PG_COLUMNS}, **values}


@BATCHES
@given(batch=batches("postgres"))
@example(batch=Batch([1], ONE, [pg_row(title="a\x00b")]))  # psycopg.DataError escaped
@example(batch=Batch([1], ONE, [pg_row(title="\udcff")]))  # UnicodeEncodeError
@example(batch=Batch([1], ONE, [pg_row(n=2**70)]))  # OverflowError
@example(batch=Batch([1], ONE, [pg_row(n=1.5)]))  # TypeError
@example(batch=Batch([1], ONE, [pg_row(n=True)]))  # was stored silently as 1
@example(batch=Batch([1], ONE, [pg_row(tags="abc")]))  # was stored as {a,b,c}
@example(batch=Batch([1], ONE, [pg_row(tags=False)]))  # was stored as {}
@example(batch=Batch(["abc"], ONE, [pg_row()]))  # ValueError from int("abc")
@example(batch=Batch([1.5], ONE, [pg_row()]))  # was stored silently as id 1
@example(batch=Batch([None], ONE, [pg_row()]))  # TypeError
@example(batch=Batch(["7"], ONE, [pg_row(score=math.inf)]))  # a str id of a number: accepted
def test_postgres_writes_a_batch_exactly_or_refuses_it_untouched(postgres_target, batch):
    check_write(postgres_target, batch)


@pytest.mark.parametrize("engine_target", ["qdrant_target", "chroma_target", "postgres_target"])
def test_rewriting_a_point_replaces_all_of_it(engine_target, request):
    """Writes are upserts: a point written again (a resumed or caught-up apply) must read
    back as the new point, not merged with the old one. Chroma's upsert merges: old
    metadata keys, documents and URIs used to stay."""
    target = request.getfixturevalue(engine_target)
    engine = target.engine
    first = {"title": "old", "n": 1, "tags": ["x"]}
    if engine == "chroma":
        first["#uri"] = "file:///old"
    if engine == "postgres":
        first, second = pg_row(**first), pg_row(title="new")
    else:
        second = {"title": "new"}
    documents = (["old document"], [None]) if engine == "chroma" else (None, None)
    check_write(target, Batch([39], ONE, [first], documents[0]), must_write=True)
    check_write(target, Batch([39], [[0.4, 0.3, 0.2, 0.1]], [second], documents[1]), must_write=True)


@pytest.mark.parametrize("method", ["identity", "procrustes", "ridge"])
def test_zero_vectors_survive_the_rewrite(method, qdrant_target, chroma_target, postgres_target):
    """A zero vector cannot be normalised. The translators map it to a finite vector
    (identity: zero again), and every engine stores that as it is."""
    from embedmigrate.translators import make_translator
    rng = np.random.default_rng(0)
    old = rng.normal(size=(200, DIM)).astype(np.float32)
    rotation, _ = np.linalg.qr(rng.normal(size=(DIM, DIM)))
    new = (old @ rotation).astype(np.float32)
    translator = make_translator(method).fit(old, new, pairs=(old[:100], new[:100]))
    zeros = np.zeros((2, DIM), np.float32)
    zeros[1, 2] = 1e-40
    translated = translator.translate(zeros)
    assert np.isfinite(translated).all()
    for target in (qdrant_target, chroma_target, postgres_target):
        payloads = [pg_row(), pg_row()] if target.engine == "postgres" else [{}, {}]
        check_write(target, Batch([37, 38], translated, payloads), must_write=True)
