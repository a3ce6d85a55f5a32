"""A real OpenAI-compatible embeddings server for tests: stdlib http.server around a real model.

    server = EmbeddingServer(encode=minilm.encode, model="minilm", api_key="sk-test")
    base = server.start()            # "http://127.0.0.1:<free port>/v1"
    server.fail_next = [429, 500]    # the next two requests fail with these statuses
    server.delay_each = 0.2          # every request stalls 0.2 s (in-flight requests overlap)
    server.max_in_flight             # the most requests it was answering at once
    server.stop()

It speaks the shape of OpenAI's ``POST /v1/embeddings`` (``input`` a string
or a list, ``data[i].index``), answers ``data`` in reverse order (clients must
sort by ``index``), checks the Bearer key, and records every request.

Run it by hand: ``python tests/embedding_server.py --port 8000 [--key-env VAR]``.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class EmbeddingServer:
    def __init__(self, encode, model: str = "minilm", api_key: str | None = None):
        self.encode = encode  # list[str] -> (n, d) array
        self.model = model
        self.api_key = api_key
        self.fail_next: list[int] = []  # statuses to answer instead of embedding, one per request
        self.delay_next: list[float] = []  # seconds to stall before answering, one per request
        self.delay_each = 0.0  # seconds every request stalls (after any delay_next)
        self.retry_after = "0"  # the Retry-After header sent with an injected 429
        self.requests: list[dict] = []  # {"authorization", "inputs", "status", "at"}
        self.in_flight = 0  # requests being answered now
        self.max_in_flight = 0  # the most at once since the last reset
        self._lock = threading.Lock()
        self._encode_lock = threading.Lock()  # a model's tokenizer is not safe in two threads at once
        self._httpd = None
        self._thread = None

    def start(self, port: int = 0) -> str:
        self._httpd = _QuietServer(("127.0.0.1", port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def reset(self) -> None:
        """Forget recorded requests and pending injections (between tests), once requests
        still being answered (a client that timed out and hung up) are done."""
        deadline = time.monotonic() + 10
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            self.fail_next, self.delay_next, self.requests[:] = [], [], []
            self.delay_each, self.retry_after, self.max_in_flight = 0.0, "0", 0

    def _next_injection(self) -> tuple[int | None, float]:
        with self._lock:
            status = self.fail_next.pop(0) if self.fail_next else None
            delay = self.delay_next.pop(0) if self.delay_next else 0.0
        return status, delay

    def handle(self, path: str, headers, body: bytes) -> tuple[int, dict, dict]:
        """(status, extra headers, JSON reply) for one request."""
        record = {"authorization": headers.get("Authorization"), "inputs": None, "status": None,
                  "at": time.monotonic()}
        with self._lock:
            self.requests.append(record)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            status, delay = self._next_injection()
            if delay + self.delay_each:
                time.sleep(delay + self.delay_each)
            reply = self._reply(path, headers, body, record, status)
        finally:
            with self._lock:
                self.in_flight -= 1
        record["status"] = reply[0]
        return reply

    def _reply(self, path, headers, body, record, injected):
        if injected is not None:
            extra = {"Retry-After": self.retry_after} if injected == 429 else {}
            return injected, extra, _error(f"injected failure {injected}", "server_error")
        if path.rstrip("/") != "/v1/embeddings":
            return 404, {}, _error(f"no route {path}", "not_found")
        if self.api_key is not None:
            sent = headers.get("Authorization") or ""
            if sent != f"Bearer {self.api_key}":
                # like several real servers, echo what was sent: clients must redact it
                return 401, {}, _error(f"Incorrect API key provided: {sent.removeprefix('Bearer ')}",
                                        "invalid_api_key")
        try:
            request = json.loads(body)
        except ValueError:
            return 400, {}, _error("body is not JSON", "invalid_request_error")
        if request.get("model") != self.model:
            return 404, {}, _error(f"The model '{request.get('model')}' does not exist", "model_not_found")
        inputs = request.get("input")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(inputs, list) or not all(isinstance(t, str) for t in inputs):
            return 400, {}, _error("input must be a string or a list of strings", "invalid_request_error")
        record["inputs"] = inputs
        with self._encode_lock:
            vectors = self.encode(inputs)
        data = [{"object": "embedding", "index": i, "embedding": [float(x) for x in v]}
                for i, v in enumerate(vectors)]
        return 200, {}, {"object": "list", "model": self.model, "data": data[::-1],
                         "usage": {"prompt_tokens": 0, "total_tokens": 0}}


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # a client that timed out and hung up is part of the tests, not a server bug
        import sys
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def _error(message: str, code: str) -> dict:
    return {"error": {"message": message, "type": code, "code": code}}


def _handler_for(server: EmbeddingServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            status, extra, reply = server.handle(self.path, self.headers, body)
            payload = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):  # keep test output quiet
            pass

    return Handler


def main() -> None:
    import argparse
    import os

    from embedmigrate.encoders import open_encoder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default="minilm", help="an embedmigrate encoder spec to serve")
    parser.add_argument("--key-env", default=None, help="require this env var's value as Bearer key")
    args = parser.parse_args()
    encoder = open_encoder(args.model)
    server = EmbeddingServer(encoder.encode, model=args.model,
                             api_key=os.environ[args.key_env] if args.key_env else None)
    print(f"serving {args.model} at {server.start(args.port)}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
