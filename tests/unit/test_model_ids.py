"""No model id resolves outside the models area of the model store: every id either passes the one id
pattern, and then names exactly one file directly under ``models/``, or is refused."""

from __future__ import annotations

import posixpath

from hypothesis import given
from hypothesis import strategies as st

from fedn.errors import InvalidArgument
from fedn.ids import check_id
from fedn.models import model_key, partial_key

_TRICKY = st.sampled_from(["..", ".", "/", "\\", "%2e%2e", "%2f", "\x00", ":", "@", "~", " ", "\n", "models", "a"])
_IDS = st.one_of(st.text(max_size=140), st.lists(_TRICKY, max_size=12).map("".join))


@given(_IDS)
def test_an_id_is_refused_or_stays_in_its_area(model_id: str):
    try:
        check_id(model_id, "model_id")
    except InvalidArgument as exc:
        assert "model_id" in exc.message
        return
    key = model_key(model_id)
    assert posixpath.normpath(key) == key and posixpath.dirname(key) == "models"
    partial = partial_key(model_id, model_id)
    assert posixpath.normpath(partial) == partial and partial.count("/") == 2


def test_the_traversals_of_the_finding_are_refused():
    for bad in ("../partials/r1/c1", "..", ".", "a/b", "..%2fx", "x\x00", "a@b", "a:b"):
        try:
            check_id(bad, "model_id")
        except InvalidArgument:
            continue
        raise AssertionError(f"{bad!r} was accepted")
