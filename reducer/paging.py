"""Keyset pages of the REST list routes: the opaque cursor and the one response shape.

Every list answers ``{"items", "count", "total", "next_cursor"}``: ``count`` items on this page,
``total`` matching items in all, and the cursor of the next page (null on the last). A cursor is the
last item's position in the list's stable order (:func:`fedn.store.base.page_key`), so items added
while a caller pages are neither skipped nor repeated, as they would be with an offset.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from fedn.ids import ID_PATTERN
from fedn.rest_records import record_to_rest
from fedn.store.base import PageKey, page_key

__all__ = ["MAX_CURSOR_CHARS", "decode_cursor", "encode_cursor", "page_body"]

MAX_CURSOR_CHARS = 512
_ID = re.compile(ID_PATTERN)


def encode_cursor(key: PageKey) -> str:
    """``key`` as URL-safe text; callers pass it back unchanged and never look inside."""
    raw = json.dumps([key.sort, key.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> PageKey:
    """The key of a cursor :func:`encode_cursor` made; ValueError (one line) for anything else."""
    problem = "not a cursor this API gave out: pass a page's next_cursor back unchanged"
    if len(text) > MAX_CURSOR_CHARS:
        raise ValueError(problem)
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        sort, record_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise ValueError(problem) from None
    is_number = isinstance(sort, int | float) and not isinstance(sort, bool) and math.isfinite(sort)
    if not is_number or not isinstance(record_id, str) or not _ID.match(record_id):
        raise ValueError(problem)
    return PageKey(sort, record_id)


def page_body(records: Sequence[BaseModel], limit: int, total: int) -> dict[str, Any]:
    """The response to a list route that asked its store for ``limit + 1`` records: the extra one
    only tells that a next page exists."""
    shown = list(records[:limit])
    more = len(records) > limit and shown
    items = [record_to_rest(r) for r in shown]
    return {
        "items": items,
        "count": len(items),
        "total": total,
        "next_cursor": encode_cursor(page_key(shown[-1])) if more else None,
    }
