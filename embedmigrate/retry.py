"""The one way embedmigrate retries a call that may fail for a moment.

Connectors (a store restarting, a lost connection) and the HTTP encoder (429,
5xx, a timeout) both go through ``retrying``: the caller says which errors are
transient and what to raise once the attempts are spent; the waits are a
bounded exponential backoff, stretched to the server's ``Retry-After`` when the
error carries one (never beyond the longest backoff wait, so one bad header
cannot stall a run).
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable

from .errors import UsageError

RETRIES_ENV = "EMBEDMIGRATE_RETRIES"
RETRY_DELAY_ENV = "EMBEDMIGRATE_RETRY_DELAY"


def retry_delays(attempts: int = 5, base: float = 0.5, cap: float = 8.0) -> list[float]:
    """Exponential backoff delays for bounded retries: ``base``, doubled each time, at most ``cap``."""
    return [min(cap, base * math.pow(2, i)) for i in range(max(0, int(attempts)))]


def retry_after(error: BaseException) -> float | None:
    """The wait in seconds a server asked for with ``Retry-After`` on the response that
    ``error`` came from (urllib, httpx and qdrant-client errors carry their headers),
    or an explicit ``error.retry_after``; None when there is none. HTTP-date forms
    are rare for APIs and read as None (the backoff applies)."""
    value = getattr(error, "retry_after", None)
    if value is None:
        headers = getattr(error, "headers", None)
        if headers is None:
            headers = getattr(getattr(error, "response", None), "headers", None)
        try:
            value = headers.get("Retry-After") if headers is not None else None
        except (AttributeError, TypeError):
            value = None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def wait_before_retry(failures: int, error: BaseException, delays: list[float],
                      give_up: Callable[[BaseException, int], BaseException], *,
                      max_wait: float | None = None) -> None:
    """Sleep before attempt ``failures + 2``, or raise ``give_up(error, attempts)`` when
    the ``delays`` are spent (for loops that cannot be one call, e.g. a scan resuming
    from its cursor)."""
    if failures >= len(delays):
        raise give_up(error, failures + 1) from None
    delay = delays[failures]
    asked = retry_after(error)
    if asked is not None:  # the server knows best, within our cap
        cap = max(delays) if max_wait is None else max_wait
        delay = max(delay, min(asked, cap))
    time.sleep(delay)


def retrying(call: Callable[[], object], *, delays: list[float],
             is_transient: Callable[[BaseException], bool],
             give_up: Callable[[BaseException, int], BaseException],
             max_wait: float | None = None):
    """``call()``, run again after each transient failure with the waits of ``delays``;
    other errors pass through unchanged. Only for calls that are safe to repeat
    (reads, idempotent upserts, connecting, embedding)."""
    failures = 0
    while True:
        try:
            return call()
        except Exception as e:  # noqa: BLE001 - is_transient decides
            if not is_transient(e):
                raise
            wait_before_retry(failures, e, delays, give_up, max_wait=max_wait)
            failures += 1


def retry_settings(options: dict, default_retries: int = 3,
                   default_delay: float = 0.5) -> tuple[int, float]:
    """How a server connector retries a call that lost the server: ``?retries=N``
    (after the first attempt) and ``?retry_delay=SECONDS`` (the first wait; it doubles
    up to 8 s) in the URI, else the EMBEDMIGRATE_RETRIES / EMBEDMIGRATE_RETRY_DELAY
    environment variables (one setting for every store of a run, and for tests),
    else 3 retries after 0.5, 1 and 2 s."""
    def read(key: str, env: str, default, kind):
        raw, label = options.get(key), f"?{key}"
        if raw is None:
            raw, label = os.environ.get(env), env
        if raw is None or raw == "":
            return default
        try:
            value = kind(raw)
        except ValueError:
            value = -1
        if value < 0 or not math.isfinite(value):
            raise UsageError(f"{label}={raw} is not a non-negative number",
                             f"set {label}= to a number >= 0, e.g. {default}")
        return value
    return (read("retries", RETRIES_ENV, default_retries, int),
            read("retry_delay", RETRY_DELAY_ENV, default_delay, float))


__all__ = ["retry_delays", "retry_after", "wait_before_retry", "retrying", "retry_settings",
           "RETRIES_ENV", "RETRY_DELAY_ENV"]
