"""An OpenAI-compatible ``/v1/embeddings`` endpoint (``openai+http(s)://``)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from ..errors import DataError, NotFoundError, UnavailableError, UsageError
from .base import KINDS, Encoder, _allow, _batches, _normalize_option, _parse_number

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass
class HTTPOptions:
    """Knobs of the HTTP encoder; each can be set in the spec's query string."""

    batch_size: int = 64  # texts per request
    retries: int = 5  # retries after the first attempt, for 429 / 5xx / connection errors
    backoff: float = 0.5  # first retry delay in seconds, doubled each time
    max_backoff: float = 8.0
    rps: float | None = None  # at most this many requests per second
    timeout: float = 60.0  # seconds per request
    dimensions: int | None = None  # sent as "dimensions" (models that can shorten vectors)


class OpenAIEncoder(Encoder):
    """Any server that speaks OpenAI's ``POST {base}/embeddings``.

    The API key is read from the environment variable ``key_env`` for every
    request; it is never stored on the object, logged or put in an error.
    """

    def __init__(self, base_url: str, model: str, *, key_env: str | None = None,
                 options: HTTPOptions | None = None, normalize: bool = True, prefixes: dict | None = None):
        host = urlsplit(base_url).netloc
        super().__init__(f"{model}@{host}", normalize=normalize, prefixes=prefixes)
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.key_env = key_env
        self.options = options or HTTPOptions()
        self._next_request_at = 0.0
        self.requests_sent = 0  # counting attempts, for reports and tests
        self.tokens_used = 0  # the endpoint's usage.total_tokens, summed (0 where it reports none)
        self._usage = threading.local()  # the same, per thread: what one copier's call cost

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/embeddings"

    def _identity(self) -> dict:
        return {"url": self.base_url, "model": self.model, "dimensions": self.options.dimensions}

    def _encode(self, texts, batch_size, show_progress, kind):
        # texts per request: the caller's explicit choice, else the spec's ?batch_size=
        size = batch_size or self.options.batch_size
        return np.concatenate([self._embed_batch(self._prefixed(batch, kind))
                               for batch in _batches(texts, size, show_progress, self.name)])

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        body = {"model": self.model, "input": texts, "encoding_format": "float"}
        if self.options.dimensions:
            body["dimensions"] = self.options.dimensions
        reply = self._post(json.dumps(body).encode("utf-8"))
        vectors = self._parse(reply, len(texts))
        self._count_usage(reply)
        return vectors

    def _count_usage(self, reply: bytes) -> None:
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            tokens = int(json.loads(reply).get("usage", {}).get("total_tokens") or 0)
            self.tokens_used += tokens
            self._usage.tokens = getattr(self._usage, "tokens", 0) + tokens

    def tokens_used_here(self) -> int:
        """Tokens the endpoint reported for this thread's requests so far."""
        return getattr(self._usage, "tokens", 0)

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": "embedmigrate"}
        if self.key_env:
            key = os.environ.get(self.key_env)
            if not key:
                raise UsageError(f"environment variable {self.key_env} (key_env) is not set",
                                 f"export {self.key_env}=<API key>")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _redact(self, text: str) -> str:
        key = os.environ.get(self.key_env) if self.key_env else None
        text = " ".join(str(text).split())[:300]
        return text.replace(key, "***") if key else text

    def _post(self, payload: bytes) -> bytes:
        opts = self.options
        delays = [min(opts.max_backoff, opts.backoff * 2 ** i) for i in range(max(0, opts.retries))]
        last_problem = ""
        for attempt in range(len(delays) + 1):
            self._wait_for_rate_limit()
            request = urllib.request.Request(self.endpoint, data=payload, headers=self._headers(), method="POST")
            self.requests_sent += 1
            retry_after = None
            try:
                with urllib.request.urlopen(request, timeout=opts.timeout) as response:
                    return response.read()
            except urllib.error.HTTPError as exc:
                detail = self._redact(_error_detail(exc))
                if exc.code not in RETRYABLE_STATUS:
                    raise self._fatal_http_error(exc.code, detail) from None
                last_problem = f"HTTP {exc.code}" + (f": {detail}" if detail else "")
                retry_after = _retry_after_seconds(exc.headers.get("Retry-After"))
            except (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError,
                    http.client.HTTPException) as exc:
                reason = getattr(exc, "reason", exc)
                last_problem = self._redact(f"{type(reason).__name__}: {reason}")
            if attempt < len(delays):
                delay = delays[attempt]
                if retry_after is not None:  # the server knows best, within our cap
                    delay = max(delay, min(retry_after, opts.max_backoff))
                time.sleep(delay)
        raise UnavailableError(f"embedding endpoint {self.endpoint} failed after {len(delays) + 1} "
                               f"attempts ({last_problem})",
                               "check the server is up and not overloaded, or raise ?retries= / lower ?rps=")

    def _wait_for_rate_limit(self) -> None:
        if not self.options.rps:
            return
        now = time.monotonic()
        if now < self._next_request_at:
            time.sleep(self._next_request_at - now)
        self._next_request_at = max(now, self._next_request_at) + 1.0 / self.options.rps

    def _fatal_http_error(self, code: int, detail: str):
        where = f"embedding endpoint {self.endpoint}"
        suffix = f": {detail}" if detail else ""
        if code in (401, 403):
            fix = (f"check the API key in ${self.key_env}" if self.key_env
                   else "add &key_env=VAR to the spec and export VAR=<API key>")
            return UsageError(f"{where} rejected the request (HTTP {code}, not authorised){suffix}", fix)
        if code == 404:
            return NotFoundError(f"{where} not found (HTTP 404){suffix}",
                                 f"the spec URL must be the API root ending in /v1, and model '{self.model}' "
                                 "must exist on the server")
        return UsageError(f"{where} refused the request (HTTP {code}){suffix}",
                          "check the model name, ?dimensions= and ?batch_size= for this server")

    def _parse(self, reply: bytes, n: int) -> np.ndarray:
        try:
            data = json.loads(reply)["data"]
            data = sorted(data, key=lambda item: item.get("index", 0))
            vectors = np.asarray([item["embedding"] for item in data], dtype=np.float32)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise DataError(f"embedding endpoint {self.endpoint} returned a response that is not "
                            "OpenAI's embeddings JSON", "point the spec at an OpenAI-compatible /v1 API root") from None
        if vectors.ndim != 2 or len(vectors) != n:
            raise DataError(f"embedding endpoint {self.endpoint} returned {len(vectors)} vectors for {n} texts",
                            "lower ?batch_size= to what the server accepts")
        return vectors


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read().decode("utf-8", errors="replace")
    except Exception:
        return ""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        parsed = json.loads(body)
        error = parsed.get("error", parsed.get("detail", parsed))
        body = error.get("message", str(error)) if isinstance(error, dict) else str(error)
    return " ".join(body.split())[:200]


def _retry_after_seconds(value) -> float | None:
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return None  # HTTP-date forms are rare for APIs; fall back to our backoff


def _open_openai(spec: str, normalize: bool | None) -> OpenAIEncoder:
    parts = urlsplit(spec)
    if parts.username or parts.password:
        raise UsageError("the encoder URL must not contain credentials",
                         "put the key in an environment variable and pass &key_env=VAR")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    known = {"model", "key_env", "normalize", "query_prefix", "passage_prefix",
             *HTTPOptions.__dataclass_fields__}
    _allow(options, known, spec.split("?", 1)[0])
    model = options.get("model")
    if not model:
        raise UsageError(f"the encoder URL '{spec.split('?', 1)[0]}' names no model",
                         "add ?model=NAME (the model the server should use)")
    if not parts.netloc:
        raise UsageError(f"the encoder URL '{spec.split('?', 1)[0]}' has no host",
                         "use e.g. openai+http://127.0.0.1:8000/v1?model=NAME")
    http = HTTPOptions()
    for key in HTTPOptions.__dataclass_fields__:
        if key in options:
            setattr(http, key, _parse_number(options[key], key, float if key in ("backoff", "max_backoff",
                                                                                 "rps", "timeout") else int))
    if http.batch_size < 1 or http.retries < 0 or (http.rps is not None and http.rps <= 0) or http.timeout <= 0:
        raise UsageError(f"bad HTTP encoder options in '{spec.split('?', 1)[0]}'",
                         "batch_size >= 1, retries >= 0, rps > 0, timeout > 0")
    base_url = f"{parts.scheme.split('+', 1)[1]}://{parts.netloc}{parts.path}"
    prefixes = {k: options[f"{k}_prefix"] for k in KINDS if f"{k}_prefix" in options}
    return OpenAIEncoder(base_url, model, key_env=options.get("key_env") or None, options=http,
                         normalize=_normalize_option(options, normalize), prefixes=prefixes)
