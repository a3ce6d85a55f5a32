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
import re
import string
import subprocess
import sys
from urllib.parse import quote

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
                     f"{quote(v, safe='', errors='surrogatepass')}" for k, v in {**opts, **fixed}.items())
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
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, (int,)):
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


@settings(max_examples=300, deadline=None)
@given(plan_documents())
def test_plan_file_loads_or_is_refused_in_one_line(plan_dir, data):
    check_plan(write_plan(plan_dir, data))


def test_the_unbroken_plan_loads(plan_dir):
    plan = check_plan(write_plan(plan_dir, to_toml(valid_plan()).encode()))
    assert plan is not None and plan.sample.pairs == 50 and plan.gate.thresholds == {"min_top1": 0.4}


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
