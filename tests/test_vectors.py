"""One vector check and one normaliser (embedmigrate/vectors.py) for connectors, translators,
encoders and metrics."""

from __future__ import annotations

import numpy as np
import pytest

from embedmigrate import metrics, vectors
from embedmigrate.connectors import base as connector_base
from embedmigrate.encoders import Encoder
from embedmigrate.errors import DataError
from embedmigrate.translators import base as translator_base
from embedmigrate.translators import make_translator


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert message and "\n" not in message
    return message


def test_every_layer_uses_the_one_check_and_normaliser():
    assert connector_base.as_float32 is vectors.as_float32
    assert translator_base._normalise is vectors.l2_normalise
    assert metrics.normalise(np.array([[3, 4]], dtype=np.float64)).dtype == np.float32


def test_l2_normalise_keeps_zero_rows_and_dtype():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float64)
    out = vectors.l2_normalise(x)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])
    assert out.dtype == np.float64 and vectors.l2_normalise(x.astype(np.float32)).dtype == np.float32


@pytest.mark.parametrize("bad,needle", [
    ([[1.0, 2.0], [3.0]], "not a 2-D array of numbers"),
    ([["a", "b"], ["c", "d"]], "not a 2-D array of numbers"),
    ([1.0, 2.0], "2-D array"),
    ([[1.0, np.nan], [1.0, 2.0]], "1 of 2 vectors contain NaN or inf"),
    ([[1e39, 1.0], [1.0, 2.0]], "NaN or inf"),  # beyond float32: inf
    ([[1.0, 2.0, 3.0]], "dimension 3 but the collection expects 2"),
])
def test_bad_vectors_are_one_line_data_errors(bad, needle):
    with pytest.raises(DataError) as exc:
        vectors.as_float32(bad, 2)
    assert needle in one_line(exc)


@pytest.mark.parametrize("bad", [[[1.0, 2.0], [3.0]], [["a", "b"], ["c", "d"]]])
def test_translators_refuse_ragged_or_text_vectors_in_one_line(bad):
    rng = np.random.default_rng(0)
    good = rng.standard_normal((50, 2)).astype(np.float32)
    with pytest.raises(DataError) as exc:
        make_translator("ridge").fit(bad, good)
    assert "old-model sample" in one_line(exc)
    fitted = make_translator("ridge").fit(good, good, pairs=(good, good))
    with pytest.raises(DataError) as exc:
        fitted.translate(bad)
    assert "vectors to translate" in one_line(exc)


class InfEncoder(Encoder):
    def _encode(self, texts, batch_size, show_progress, kind):
        return np.array([[1.0, np.inf]] * len(texts), dtype=np.float32)

    def _identity(self):
        return {}


def test_an_encoder_that_returns_inf_is_a_one_line_data_error():
    with pytest.raises(DataError) as exc:
        InfEncoder("broken").encode(["a", "b"])
    assert "encoder broken" in one_line(exc) and "2 of 2 vectors contain NaN or inf" in one_line(exc)
