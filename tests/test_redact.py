"""One redaction scheme (embedmigrate/redact.py) for parsed URIs, their error messages and reports."""

from __future__ import annotations

import pytest

from embedmigrate import redact, report
from embedmigrate.connectors import uri as uri_module
from embedmigrate.connectors.uri import parse_uri
from embedmigrate.errors import UsageError


def test_uris_errors_and_reports_share_one_scheme():
    assert report.scrub_secrets is redact.scrub_secrets
    assert uri_module._strip_password is redact.scrub_secrets
    assert uri_module.SECRET_OPTIONS is redact.SECRET_OPTIONS


@pytest.mark.parametrize("text,secret,kept", [
    ("postgresql://app:hunter2@db:5432/x?table=t", "hunter2", "postgresql://app:***@db:5432/x?table=t"),
    ("postgresql://app:p@ss@db/x", "p@ss", "postgresql://app:***@db/x"),  # "@" in the password
    ("postgresql://:hunter2@/x?host=/tmp", "hunter2", "postgresql://:***@/x?host=/tmp"),
    ("see postgresql://h/db?sslpassword=hunter2&table=t", "hunter2", "?sslpassword=***&table=t"),
    ("qdrant://h:6333/x?api_key=abc&y=1", "abc", "qdrant://h:6333/x?api_key=***&y=1"),
    ("chroma+http://h:8000/c?token=tok-9&token_env=T", "tok-9", "token=***&token_env=T"),
    ("a log line: pwd=hunter2 secret=s3cr3t", "hunter2", "pwd=*** secret=***"),
])
def test_scrub_secrets_masks_every_form(text, secret, kept):
    scrubbed = redact.scrub_secrets(text)
    assert secret not in scrubbed and kept in scrubbed, scrubbed


def test_a_bad_uri_error_never_shows_a_secret_option():
    with pytest.raises(UsageError) as e:
        parse_uri("qdrant://user:pw@/c?pwd=hunter2")
    assert "hunter2" not in str(e.value) and ":pw@" not in str(e.value)


def test_ports_and_paths_are_not_mistaken_for_passwords():
    text = "qdrant://host:6333/coll@x and chroma+http://h:8000/c?tokens=3"
    assert redact.scrub_secrets(text) == text
