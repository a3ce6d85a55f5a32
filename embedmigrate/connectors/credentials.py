"""Credentials and TLS settings named by a collection URI.

A secret reaches a connector from the environment or from a file, named in
the URI's query string (the name of the variable or the path of the file is
not secret, so plans and state files may keep it):

    ?password_file=/run/secrets/pg       the file's content (one trailing newline dropped)
    ?password_env=PG_PASSWORD            that environment variable
    ?password=...                        the secret itself: works, but only for the
                                         command it is typed into (plans never store it)

The same three forms exist for ``api_key`` (Qdrant; default variable
``QDRANT_API_KEY``) and ``token`` (Chroma). Postgres also keeps libpq's own
PGPASSWORD and ~/.pgpass.

TLS for the HTTP engines (Qdrant REST, Chroma) uses libpq's option names, so
one vocabulary fits every engine: ``sslrootcert`` (CA bundle to trust),
``sslcert`` + ``sslkey`` (client certificate), and ``verify=false`` (no
certificate check: for tests only).
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from ..errors import UsageError
from .uri import SECRET_OPTIONS, CollectionURI  # noqa: F401 - SECRET_OPTIONS is re-exported

TLS_OPTIONS = ("sslrootcert", "sslcert", "sslkey", "verify")
FALSE = ("0", "false", "no", "off")


def secret(uri: CollectionURI, name: str, *, default_env: str | None = None,
           what: str = "secret") -> str | None:
    """The credential ``name`` for ``uri``: ``?NAME=`` itself, else the file named by
    ``?NAME_file=``, else the variable named by ``?NAME_env=``, else ``default_env``
    (None when that is unset too). A file or variable that is named but missing or
    empty is an error: silently connecting without the credential would hide it."""
    opts = uri.options
    if opts.get(name):
        return opts[name]
    path = opts.get(f"{name}_file")
    if path:
        try:
            value = Path(path).expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = getattr(e, "strerror", None) or type(e).__name__
            raise UsageError(f"cannot read the {what} file {path} (?{name}_file=): {reason}",
                             f"point ?{name}_file= at a readable file that holds only the "
                             f"{what}") from None
        value = value.removesuffix("\n").removesuffix("\r")  # echo / editors add one newline
        if not value:
            raise UsageError(f"the {what} file {path} (?{name}_file=) is empty",
                             f"write the {what} into that file")
        return value
    env = opts.get(f"{name}_env")
    if env:
        value = os.environ.get(env)
        if not value:
            raise UsageError(f"the environment variable {env} (named by ?{name}_env=) is not set",
                             f"export {env}=<your {what}>")
        return value
    if default_env:
        return os.environ.get(default_env) or None
    return None


def http_tls(uri: CollectionURI, tls: bool, *, client_cert: bool = True):
    """The ``verify`` argument of an httpx client for ``uri``'s TLS options: an
    ``ssl.SSLContext`` (custom CA and/or client certificate), ``False`` for
    ``?verify=false``, or None when the URI sets none of them (the system's CAs).

    TLS options on a plain-HTTP URI are refused: they would be silently ignored."""
    opts = uri.options
    given = [k for k in TLS_OPTIONS if opts.get(k)]
    if not given:
        return None
    if not tls:
        raise UsageError(f"?{given[0]}= needs a TLS connection, and {uri.scheme}:// is plain HTTP",
                         "use qdrants:// (or ?https=true) for Qdrant, chroma+https:// for Chroma")
    if opts.get("verify", "").lower() in FALSE:
        return False
    if not client_cert and (opts.get("sslcert") or opts.get("sslkey")):
        raise UsageError(f"client certificates (?sslcert=, ?sslkey=) are not supported for "
                         f"{uri.scheme}://", "remove them; authenticate with ?token_file= instead")
    if bool(opts.get("sslcert")) != bool(opts.get("sslkey")):
        raise UsageError("a client certificate needs both ?sslcert= and ?sslkey=",
                         "pass both files (PEM), or neither")
    try:
        context = ssl.create_default_context(cafile=opts.get("sslrootcert") or None)
        if opts.get("sslcert"):
            context.load_cert_chain(opts["sslcert"], opts["sslkey"])
    except (OSError, ssl.SSLError) as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        files = ", ".join(f"{k}={opts[k]}" for k in ("sslrootcert", "sslcert", "sslkey")
                          if opts.get(k))
        raise UsageError(f"cannot load the TLS files ({files}): {reason}",
                         "point them at readable PEM files (CA bundle, client certificate "
                         "and its key)") from None
    return context


def tls_failure(err: BaseException) -> str | None:
    """The reason, when ``err`` (or what caused it) is a failed TLS handshake:
    a certificate problem that retrying cannot fix."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, ssl.SSLError):
            return getattr(err, "verify_message", None) or err.reason or str(err)
        text = str(err)
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            return "certificate verify failed"
        if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
            return "the server does not speak TLS on that port"
        # qdrant-client wraps the transport error in .source
        err, seen = getattr(err, "source", None) or err.__cause__ or err.__context__, seen + 1
    return None
