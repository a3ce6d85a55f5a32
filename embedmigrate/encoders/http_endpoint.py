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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from .. import retry
from ..errors import DataError, NotFoundError, UnavailableError, UsageError
from .base import KINDS, Encoder, _allow, _normalize_option, _parse_number

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass
class HTTPOptions:
    """Knobs of the HTTP encoder; each can be set in the spec's query string."""

    batch_size: int = 64  # texts per request
    retries: int = 5  # retries after the first attempt, for 429 / 5xx / connection errors
    backoff: float = 0.5  # first retry delay in seconds, doubled each time
    max_backoff: float = 8.0  # the longest wait, also for a server's Retry-After
    rps: float | None = None  # at most this many requests per second (all threads together)
    timeout: float = 60.0  # seconds per request
    dimensions: int | None = None  # sent as "dimensions" (models that can shorten vectors)
    concurrency: int = 4  # requests in flight at once (all callers of this encoder together)


class _Retryable(Exception):
    """A failure another attempt may get past (429, 5xx, a timeout, a refused connection)."""

    def __init__(self, problem: str, retry_after: float | None = None):
        super().__init__(problem)
        self.problem = problem
        self.retry_after = retry_after  # the server's Retry-After, read by retry.wait_before_retry


class OpenAIEncoder(Encoder):
    """Any server that speaks OpenAI's ``POST {base}/embeddings``.

    A call's texts go out in requests of ``batch_size`` texts, up to
    ``concurrency`` of them in flight at once (the vectors come back in input
    order), spaced to at most ``rps`` requests a second; each request is
    retried through the one retry helper (retry.py) on 429 / 5xx / connection
    errors, honouring the server's Retry-After.

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
        self._lock = threading.Lock()  # the rate limit's schedule and the counters below
        # one slot per request in flight, shared by every thread that calls this encoder
        self._slots = threading.BoundedSemaphore(max(1, int(self.options.concurrency)))
        self.requests_sent = 0  # counting attempts, for reports and tests
        self.tokens_used = 0  # the endpoint's usage.total_tokens, summed (0 where it reports none)
        self._usage = threading.local()  # the same, per calling thread: what one copier's call cost

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/embeddings"

    def _identity(self) -> dict:
        return {"url": self.base_url, "model": self.model, "dimensions": self.options.dimensions}

    def _encode(self, texts, batch_size, show_progress, kind):
        # texts per request: the caller's explicit choice, else the spec's ?batch_size=
        size = batch_size or self.options.batch_size
        requests = [self._prefixed(texts[i:i + size], kind) for i in range(0, len(texts), size)]
        results = self._embed_all(requests)
        if show_progress:
            from tqdm.auto import tqdm
            results = tqdm(results, total=len(requests), desc=self.name, unit="batch")
        vectors, tokens = [], 0
        for batch_vectors, batch_tokens in results:
            vectors.append(batch_vectors)
            tokens += batch_tokens
        # counted for the calling thread, though worker threads sent the requests
        self._usage.tokens = getattr(self._usage, "tokens", 0) + tokens
        return np.concatenate(vectors)

    def _embed_all(self, requests: list[list[str]]):
        """(vectors, tokens) per request, in input order, up to ``concurrency`` at once."""
        workers = min(max(1, int(self.options.concurrency)), len(requests))
        if workers == 1:
            yield from map(self._embed_batch, requests)
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="embedmigrate-http") as pool:
            # map yields in input order and cancels what has not started if one request fails
            yield from pool.map(self._embed_batch, requests)

    def _embed_batch(self, texts: list[str]) -> tuple[np.ndarray, int]:
        body = {"model": self.model, "input": texts, "encoding_format": "float"}
        if self.options.dimensions:
            body["dimensions"] = self.options.dimensions
        reply = self._post(json.dumps(body).encode("utf-8"))
        vectors = self._parse(reply, len(texts))
        return vectors, self._count_usage(reply)

    def _count_usage(self, reply: bytes) -> int:
        tokens = 0
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            tokens = int(json.loads(reply).get("usage", {}).get("total_tokens") or 0)
        with self._lock:
            self.tokens_used += tokens
        return tokens

    def tokens_used_here(self) -> int:
        """Tokens the endpoint reported for this thread's calls so far."""
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
        return retry.retrying(lambda: self._post_once(payload),
                              delays=retry.retry_delays(opts.retries, base=opts.backoff, cap=opts.max_backoff),
                              is_transient=lambda e: isinstance(e, _Retryable),
                              give_up=self._gave_up, max_wait=opts.max_backoff)

    def _post_once(self, payload: bytes) -> bytes:
        """One attempt; a failure worth another is raised as ``_Retryable``."""
        headers = self._headers()
        with self._slots:
            self._wait_for_rate_limit()
            request = urllib.request.Request(self.endpoint, data=payload, headers=headers, method="POST")
            with self._lock:
                self.requests_sent += 1
            try:
                with urllib.request.urlopen(request, timeout=self.options.timeout) as response:
                    return response.read()
            except urllib.error.HTTPError as exc:
                detail = self._redact(_error_detail(exc))
                if exc.code not in RETRYABLE_STATUS:
                    raise self._fatal_http_error(exc.code, detail) from None
                raise _Retryable(f"HTTP {exc.code}" + (f": {detail}" if detail else ""),
                                 retry.retry_after(exc)) from None
            except (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError,
                    http.client.HTTPException) as exc:
                reason = getattr(exc, "reason", exc)
                raise _Retryable(self._redact(f"{type(reason).__name__}: {reason}")) from None

    def _gave_up(self, error: BaseException, attempts: int) -> UnavailableError:
        return UnavailableError(f"embedding endpoint {self.endpoint} failed after {attempts} "
                                f"attempts ({getattr(error, 'problem', error)})",
                                "check the server is up and not overloaded, or raise ?retries= / lower "
                                "?rps= / ?concurrency=")

    def _wait_for_rate_limit(self) -> None:
        """Take the next free send time (``1/rps`` after the last one) and sleep until it:
        threads reserve their slot under the lock, so together they keep to ``rps``."""
        if not self.options.rps:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_request_at)
            self._next_request_at = start + 1.0 / self.options.rps
        if start > now:
            time.sleep(start - now)

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
    if (http.batch_size < 1 or http.retries < 0 or (http.rps is not None and http.rps <= 0)
            or http.timeout <= 0 or http.concurrency < 1):
        raise UsageError(f"bad HTTP encoder options in '{spec.split('?', 1)[0]}'",
                         "batch_size >= 1, retries >= 0, rps > 0, timeout > 0, concurrency >= 1")
    base_url = f"{parts.scheme.split('+', 1)[1]}://{parts.netloc}{parts.path}"
    prefixes = {k: options[f"{k}_prefix"] for k in KINDS if f"{k}_prefix" in options}
    return OpenAIEncoder(base_url, model, key_env=options.get("key_env") or None, options=http,
                         normalize=_normalize_option(options, normalize), prefixes=prefixes)
