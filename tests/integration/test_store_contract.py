"""One contract suite for every store backend (the production backends join it in their issue)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fedn.errors import InvalidArgument, NotFound
from fedn.records import ClientRecord, CombinerRecord, ModelRecord, Round, RoundStatus, Session, SessionStatus
from fedn.store import ModelStore, StateStore, open_model_store, open_state_store


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


@pytest.fixture(params=["local", "s3"])
def models(request, tmp_path: Path) -> Iterator[ModelStore]:
    url = (tmp_path / "models").as_uri() if request.param == "local" else request.getfixturevalue("s3_url")
    store = open_model_store(url)
    yield store
    store.close()


def _session(i: int) -> Session:
    return Session(rounds=3, seed_model_id="m0", model_id="m0", created_at=1000.0 + i)


def test_session_put_get_replace_list(state: StateStore):
    sessions = [_session(i) for i in range(5)]
    for s in sessions:
        state.put_session(s)
    got = state.get_session(sessions[2].id)
    assert got == sessions[2]
    state.put_session(got.model_copy(update={"status": SessionStatus.RUNNING}))
    assert state.get_session(got.id).status == SessionStatus.RUNNING
    listed = state.list_sessions()
    assert [s.id for s in listed] == [s.id for s in reversed(sessions)]
    page = state.list_sessions(limit=2, offset=1)
    assert [s.id for s in page] == [sessions[3].id, sessions[2].id]


def test_unknown_ids_raise_not_found(state: StateStore):
    for getter in (state.get_session, state.get_round, state.get_model, state.get_client, state.get_combiner):
        with pytest.raises(NotFound):
            getter("nope")


def test_rounds_listed_in_index_order_per_session(state: StateStore):
    for index in (3, 1, 2):
        state.put_round(Round(session_id="s1", index=index, model_in="m"))
    state.put_round(Round(session_id="s2", index=1, model_in="m"))
    rounds = state.list_rounds("s1")
    assert [r.index for r in rounds] == [1, 2, 3]
    done = rounds[0].model_copy(update={"status": RoundStatus.DONE, "model_out": "m2"})
    state.put_round(done)
    assert state.get_round(done.id).model_out == "m2"
    assert len(state.list_rounds("s1")) == 3


def test_models_clients_combiners(state: StateStore):
    for i in range(3):
        state.put_model(
            ModelRecord(
                key=f"k{i}",
                sha256="0" * 64,
                size_bytes=1,
                num_parameters=1,
                session_id="s" if i else None,
                created_at=10.0 + i,
            )
        )
    assert len(state.list_models()) == 3
    assert [m.key for m in state.list_models(session_id="s")] == ["k2", "k1"]
    c = ClientRecord(name="c1")
    state.put_client(c)
    assert state.get_client(c.id).name == "c1"
    assert [x.id for x in state.list_clients()] == [c.id]
    state.put_combiner(CombinerRecord(id="combiner-0", name="combiner-0", address="127.0.0.1:1"))
    assert state.get_combiner("combiner-0").address == "127.0.0.1:1"
    assert [x.id for x in state.list_combiners()] == ["combiner-0"]


def test_model_blobs(models: ModelStore):
    size = models.put("models/a.safetensors", [b"abc", b"def"])
    assert size == 6
    assert models.exists("models/a.safetensors")
    assert models.get("models/a.safetensors") == b"abcdef"
    assert b"".join(models.iter_chunks("models/a.safetensors", 4)) == b"abcdef"
    models.put("models/a.safetensors", b"new")
    assert models.get("models/a.safetensors") == b"new"
    models.delete("models/a.safetensors")
    assert not models.exists("models/a.safetensors")
    with pytest.raises(NotFound):
        models.get("models/a.safetensors")
    with pytest.raises(NotFound):
        list(models.iter_chunks("missing", 4))


@pytest.mark.parametrize("key", ["../escape", "/abs/path", ""])
def test_model_keys_cannot_escape(models: ModelStore, key: str):
    with pytest.raises(InvalidArgument):
        models.put(key, b"x")


def test_same_pages_from_every_backend(request, tmp_path: Path):
    """Differential: every state backend returns the same ids for the same page and filter."""
    backends = [open_state_store("sqlite://:memory:"), open_state_store(request.getfixturevalue("mongo_url"))]
    for store in backends:
        for i in range(12):
            store.put_session(
                Session(id=f"s{i:02d}", rounds=1, seed_model_id="m", model_id="m", created_at=100.0 + i // 3)
            )  # ties on created_at: ordered by id
            store.put_model(
                ModelRecord(
                    id=f"m{i:02d}",
                    key="k",
                    sha256="0",
                    size_bytes=1,
                    num_parameters=1,
                    session_id=f"s{i % 2}",
                    created_at=float(i % 5),
                )
            )
    pages = [
        [
            [s.id for s in store.list_sessions(limit=5, offset=3)],
            [m.id for m in store.list_models(session_id="s1", limit=3, offset=1)],
            [m.id for m in store.list_models(limit=100)],
        ]
        for store in backends
    ]
    assert pages[0] == pages[1]
    for store in backends:
        store.close()


def test_unknown_store_schemes_are_rejected():
    with pytest.raises(InvalidArgument, match="sqlite"):
        open_state_store("postgres://x")
    with pytest.raises(InvalidArgument, match="file"):
        open_model_store("ftp://x")
