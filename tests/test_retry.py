"""The one retry helper (embedmigrate/retry.py) that connectors and the HTTP encoder share."""

from __future__ import annotations

import time

import pytest

from embedmigrate.errors import UnavailableError
from embedmigrate.retry import retry_after, retry_delays, retrying


class Refused(Exception):
    def __init__(self, headers=None):
        super().__init__("refused")
        self.headers = headers or {}


class Response:
    def __init__(self, headers):
        self.headers = headers


class StatusError(Exception):
    """Shaped like httpx.HTTPStatusError: the headers hang off ``response``."""

    def __init__(self, headers):
        super().__init__("503")
        self.response = Response(headers)


def flaky(failures: list[Exception]):
    calls = []

    def call():
        calls.append(time.perf_counter())
        if failures:
            raise failures.pop(0)
        return "ok"
    return call, calls


def give_up(error, attempts):
    return UnavailableError(f"gave up after {attempts} attempts ({error})", "try later")


def test_transient_failures_are_retried_then_succeed():
    call, calls = flaky([Refused(), Refused()])
    assert retrying(call, delays=[0.01, 0.01, 0.01], is_transient=lambda e: isinstance(e, Refused),
                    give_up=give_up) == "ok"
    assert len(calls) == 3


def test_spent_retries_give_up_with_one_error_and_others_pass_through():
    call, calls = flaky([Refused()] * 5)
    with pytest.raises(UnavailableError, match="after 3 attempts"):
        retrying(call, delays=[0.0, 0.0], is_transient=lambda e: isinstance(e, Refused), give_up=give_up)
    assert len(calls) == 3
    call, calls = flaky([ValueError("bad")])
    with pytest.raises(ValueError):
        retrying(call, delays=[0.0] * 3, is_transient=lambda e: isinstance(e, Refused), give_up=give_up)
    assert len(calls) == 1


@pytest.mark.parametrize("error", [Refused({"Retry-After": "0.3"}), StatusError({"Retry-After": "0.3"})])
def test_retry_after_stretches_the_wait_within_the_cap(error):
    call, calls = flaky([error])
    retrying(call, delays=[0.01, 1.0], is_transient=lambda e: True, give_up=give_up)
    assert calls[1] - calls[0] >= 0.3
    call, calls = flaky([Refused({"Retry-After": "3600"})])  # capped at the longest backoff wait
    retrying(call, delays=[0.01, 0.2], is_transient=lambda e: True, give_up=give_up)
    assert 0.2 <= calls[1] - calls[0] < 1.0


def test_retry_after_reads_seconds_only():
    assert retry_after(Refused({"Retry-After": "2"})) == 2.0
    assert retry_after(Refused({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) is None
    assert retry_after(Refused({"Retry-After": "-1"})) is None
    assert retry_after(ValueError()) is None
    assert retry_delays(4, base=0.5, cap=2.0) == [0.5, 1.0, 2.0, 2.0]
