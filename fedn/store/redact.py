"""URLs in messages and logs, with their secrets replaced by ``***``.

Redaction is by pattern over the text, not by parsing: a password with an unencoded ``/``, ``#``,
``?`` or ``@``, or a multi-host MongoDB URI, is not a valid URL for ``urllib``, and a parser that
gives up (or raises) is exactly when a secret would be printed. Where the text is ambiguous more is
hidden, never less:

- userinfo: ``scheme://user:SECRET@...`` keeps ``user`` and hides everything up to the *last* ``@``
  of the URL; ``scheme://TOKEN@...`` (no colon) hides the whole userinfo;
- query parameters whose name says secret (``secret_key``, ``access_key``, ``password``, ``token``,
  ``X-Amz-Signature``, ...) hide their value up to the next ``&name=`` or the end of the URL.
"""

from __future__ import annotations

import re

from pydantic import SecretStr

__all__ = ["redact_url"]

MASK = "***"

# scheme://user:SECRET@  — the username may not hold ":/?#@" (it ends at the colon); the secret runs
# to the last "@" before whitespace, so a password holding "/", "#", "?" or "@" is covered.
_USER_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]*:(?P<secret>\S*)@")
# scheme://SECRET@  — userinfo without a colon may itself be a credential.
_USER_ONLY = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://(?P<secret>[^\s:/?#@]+)@")
_SECRET_NAME = r"[A-Za-z0-9_.-]*(?:pass|pwd|secret|token|key|credential|sig|authmechanismproperties)[A-Za-z0-9_.-]*"
# name=SECRET, the value running on through any "&" that does not start another name=value pair.
_SECRET_PARAM = re.compile(
    rf"(?<![A-Za-z0-9_.-]){_SECRET_NAME}=(?P<secret>(?:[^&\s]|&(?![A-Za-z0-9_.-]+=))+)", re.IGNORECASE
)
_PATTERNS = (_USER_PASSWORD, _USER_ONLY, _SECRET_PARAM)


def redact_url(url: str | SecretStr | object) -> str:
    """``url`` (or any text holding URLs) safe to print; never raises.

    Every pattern is matched on the original text and the union of what they cover is hidden, so a
    secret that one pattern cuts short (a password holding ``?secret_key=``, a query value holding
    ``@``) is still covered by the other. A ``SecretStr`` (a settings field marked secret) is
    unwrapped and redacted like a string.
    """
    text = url.get_secret_value() if isinstance(url, SecretStr) else url
    if not isinstance(text, str):
        try:
            text = str(text)
        except Exception:  # an object whose __str__ fails says nothing we could print
            return MASK
    merged: list[list[int]] = []
    for start, end in sorted(m.span("secret") for pattern in _PATTERNS for m in pattern.finditer(text)):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, shown = [], 0  # text before index `shown` is in out
    for start, end in merged:
        out += [text[shown:start], MASK]
        shown = end
    out.append(text[shown:])
    return "".join(out)
