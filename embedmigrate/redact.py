"""The one way embedmigrate keeps secrets out of what it prints, stores and reports.

One list of option names whose value is a secret, one mask (``***``): a parsed
URI drops or masks those options (connectors/uri.py), and ``scrub_secrets``
masks any ``scheme://user:password@`` and ``name=value`` of those names left in
free text (error messages, reports) — the same rule in both places.
"""

from __future__ import annotations

import re

MASK = "***"

# query options / parameters whose value is itself a secret (see connectors/credentials.py):
# plans and state files never keep them, printed text shows *** instead
SECRET_OPTIONS = ("password", "passwd", "pwd", "sslpassword", "api_key", "apikey", "api-key",
                  "token", "secret")

# user:password@ in any URI; the password runs to the last "@" before the path, so a
# password holding "@" is masked whole
_USERINFO_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@'\"]*):[^\s/'\"]*@")
# name=value of a secret option, in a query string or in prose (not token_env=, not mytoken=)
_SECRET_VALUE = re.compile(r"(?i)(?<![A-Za-z0-9_\-])(%s)=[^&#\s'\"<]*"
                           % "|".join(re.escape(name) for name in SECRET_OPTIONS))


def scrub_secrets(text: str) -> str:
    """``text`` with every URI password and every secret option's value replaced by ***."""
    text = _USERINFO_PASSWORD.sub(r"\1:" + MASK + "@", text)
    return _SECRET_VALUE.sub(r"\1=" + MASK, text)


__all__ = ["MASK", "SECRET_OPTIONS", "scrub_secrets"]
