"""One device picker (embedmigrate/device.py) for vec2vec, the MLP translator and the
sentence-transformers encoders. No GPU here: the CUDA branch is tested by its refusal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedmigrate.device import mixed_precision, pick_device
from embedmigrate.encoders import open_encoder
from embedmigrate.errors import UsageError
from embedmigrate.translators import make_translator
from embedmigrate.translators import vec2vec

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert message and "\n" not in message and exc_info.value.fix
    return message


@no_cuda
def test_auto_is_the_cpu_here_and_mixed_precision_only_on_cuda():
    assert pick_device("auto").type in ("cpu", "mps") and pick_device(None).type in ("cpu", "mps")
    assert vec2vec.pick_device is pick_device
    assert mixed_precision(torch.device("cuda")) and not mixed_precision(torch.device("cuda"), False)
    assert not mixed_precision(torch.device("cpu"))


def pairs(n=120, d=8):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x, (x @ rng.standard_normal((d, d))).astype(np.float32)


@no_cuda
@pytest.mark.parametrize("device,needle", [("cuda", "no CUDA GPU"), ("cuda:1", "no CUDA GPU"),
                                           ("tpu", "unknown device 'tpu'")])
def test_the_mlp_translator_refuses_a_missing_device_in_one_line(device, needle):
    old, new = pairs()
    with pytest.raises(UsageError) as exc:
        make_translator("mlp", device=device, max_epochs=1).fit(old, new, pairs=(old, new))
    assert needle in one_line(exc)


def test_the_mlp_translator_trains_on_the_picked_device():
    old, new = pairs()
    fitted = make_translator("mlp", device="auto", max_epochs=2, hidden=16).fit(old, new, pairs=(old, new))
    assert np.isfinite(fitted.translate(old[:4])).all()


def test_an_encoder_refuses_a_missing_device_in_one_line():
    with pytest.raises(UsageError) as exc:
        open_encoder("minilm?device=tpu").encode(["a text"])
    assert "unknown device 'tpu'" in one_line(exc)
