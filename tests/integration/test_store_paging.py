"""Keyset paging (``after=``) and ``count_*`` of every state backend: the store contract's paging part
(test_store_contract.py is at its size limit). Runs against SQLite and MongoDB (SecantusDB)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fedn.errors import InvalidArgument
from fedn.records import AuditEvent, ClientRecord, CombinerRecord, ModelRecord, Round, Session, TokenRecord
from fedn.store import StateStore, open_state_store
from fedn.store.base import PageKey, page_key


@pytest.fixture(params=["sqlite-memory", "sqlite-file", "mongo"])
def state(request, tmp_path: Path) -> Iterator[StateStore]:
    urls = {
        "sqlite-memory": lambda: "sqlite://:memory:",
        "sqlite-file": lambda: f"sqlite:///{tmp_path / 'state.db'}",
        "mongo": lambda: request.getfixturevalue("mongo_url"),
    }
    store = open_state_store(urls[request.param]())
    yield store
    store.close()


def _walk(list_page: Callable[..., list], page_size: int, between: Callable[[int], None] = lambda _: None) -> list:
    """Every record of a list, page by page through ``after=``; ``between(n)`` runs after page n."""
    seen, after = [], None
    for n in range(100):  # bounded: the tests hold far fewer pages
        page = list_page(limit=page_size, after=after)
        seen.extend(page)
        if len(page) < page_size:
            return seen
        after = page_key(page[-1])
        between(n)
    raise AssertionError("paging did not end")


def _session(i: int, created_at: float) -> Session:
    return Session(id=f"s{i:02d}", rounds=1, seed_model_id="m", model_id="m", created_at=created_at)


def test_session_pages_neither_skip_nor_repeat_while_sessions_are_added(state: StateStore):
    for i in range(9):
        state.put_session(_session(i, 100.0 + i // 3))  # ties on created_at: ordered by id
    expected = [s.id for s in state.list_sessions(limit=100)]

    def add_newer(n: int) -> None:  # a new session while a caller pages; an offset would repeat one
        state.put_session(_session(50 + n, 200.0 + n))

    walked = _walk(lambda **kw: state.list_sessions(**kw), 2, add_newer)
    assert [s.id for s in walked] == expected
    assert expected == ["s08", "s07", "s06", "s05", "s04", "s03", "s02", "s01", "s00"]
    assert state.count_sessions() == 9 + 4


def test_rounds_page_in_index_order_and_count_per_session(state: StateStore):
    for index in (5, 1, 4, 2, 3):
        state.put_round(Round(id=f"r{index}", session_id="s1", index=index, model_in="m"))
    state.put_round(Round(session_id="s2", index=1, model_in="m"))
    assert [r.index for r in state.list_rounds("s1", limit=2)] == [1, 2]
    assert [r.index for r in state.list_rounds("s1", limit=2, after=PageKey(2, "r2"))] == [3, 4]
    assert [r.index for r in _walk(lambda **kw: state.list_rounds("s1", **kw), 2)] == [1, 2, 3, 4, 5]
    assert len(state.list_rounds("s1")) == 5  # the controller's call: every round, no limit
    assert (state.count_rounds("s1"), state.count_rounds("s2"), state.count_rounds("none")) == (5, 1, 0)


def _model(i: int, session_id: str | None) -> ModelRecord:
    return ModelRecord(
        id=f"m{i:02d}", key="k", sha256="0", size_bytes=1, num_parameters=1, session_id=session_id, created_at=i % 4
    )


def test_models_clients_combiners_page_and_count(state: StateStore):
    for i in range(10):
        state.put_model(_model(i, "a" if i % 2 else None))
        state.put_client(ClientRecord(id=f"c{i:02d}", name="c", assigned_at=float(i // 2)))
        state.put_combiner(CombinerRecord(id=f"k{i:02d}", name="k", address="h:1", registered_at=float(i % 3)))
    assert [m.id for m in _walk(lambda **kw: state.list_models(**kw), 3)] == [
        m.id for m in state.list_models(limit=None)
    ]
    in_a = _walk(lambda **kw: state.list_models(session_id="a", **kw), 2)
    assert [m.id for m in in_a] == ["m07", "m03", "m09", "m05", "m01"]  # created_at 3,3,1,1,1: ties by id
    assert (state.count_models(), state.count_models(session_id="a")) == (10, 5)
    assert [c.id for c in _walk(lambda **kw: state.list_clients(**kw), 4)] == [f"c{i:02d}" for i in reversed(range(10))]
    assert state.count_clients() == 10
    combiners = _walk(lambda **kw: state.list_combiners(**kw), 3)  # oldest first
    assert [c.id for c in combiners] == ["k00", "k03", "k06", "k09", "k01", "k04", "k07", "k02", "k05", "k08"]
    assert [c.id for c in state.list_combiners()] == [c.id for c in combiners]  # no limit: all
    assert state.count_combiners() == 10


def test_audit_and_tokens_page_and_count_with_filters(state: StateStore):
    for i in range(12):
        action = "session.create" if i % 2 else "model.upload"
        state.append_audit(
            AuditEvent(
                id=f"e{i:02d}",
                time=1000.0 + i // 3,
                subject=f"u{i % 3}",
                action=action,
                outcome="ok",
                role="admin",
                peer="p",
                target="t",
            )
        )
        state.put_token(
            TokenRecord(
                id=f"t{i:02d}",
                subject="x",
                role="client",
                issued_at=100.0 + i // 2,
                expires_at=200.0 + i,
                issued_by="a",
            )
        )
    walked = _walk(lambda **kw: state.list_audit(action="session.create", **kw), 2)
    assert [e.id for e in walked] == ["e11", "e09", "e07", "e05", "e03", "e01"]
    assert (state.count_audit(), state.count_audit(action="session.create", subject="u0")) == (12, 2)
    live = _walk(lambda **kw: state.list_tokens(now=205.5, **kw), 2)  # expires_at > now: t06..t11
    assert [t.id for t in live] == ["t11", "t10", "t09", "t08", "t07", "t06"]
    assert (state.count_tokens(now=205.5), state.count_tokens(now=205.5, include_expired=True)) == (6, 12)


def test_a_non_finite_page_key_is_an_invalid_argument(state: StateStore):
    with pytest.raises(InvalidArgument):
        state.list_sessions(after=PageKey(float("nan"), "s1"))


def test_same_keyset_pages_from_every_backend(request):
    """Differential: every backend walks the same ids, page by page, for the same inputs."""
    backends = [open_state_store("sqlite://:memory:"), open_state_store(request.getfixturevalue("mongo_url"))]
    for store in backends:
        for i in range(15):
            store.put_session(_session(i, 100.0 + i % 4))
            store.put_model(_model(i, f"s{i % 2}"))
            store.put_round(Round(id=f"r{i:02d}", session_id="s", index=i, model_in="m"))
    walks = [
        [
            [s.id for s in _walk(lambda st=store, **kw: st.list_sessions(**kw), 4)],
            [m.id for m in _walk(lambda st=store, **kw: st.list_models(session_id="s1", **kw), 3)],
            [r.id for r in _walk(lambda st=store, **kw: st.list_rounds("s", **kw), 6)],
        ]
        for store in backends
    ]
    assert walks[0] == walks[1]
    for store in backends:
        store.close()
