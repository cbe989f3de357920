"""One contract suite for every store backend (the production backends join it in their issue)."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pymongo
import pytest

from fedn.errors import InvalidArgument, NotFound
from fedn.records import (
    AuditEvent,
    ClientRecord,
    CombinerRecord,
    ModelRecord,
    Round,
    RoundStatus,
    Session,
    SessionStatus,
    TokenRecord,
)
from fedn.store import ModelStore, StateStore, StoredObject, open_model_store, open_state_store


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


RawWrite = Callable[[str, dict, str | None, float], None]


@pytest.fixture(params=["sqlite-file", "mongo"])
def state_and_raw(request, tmp_path: Path) -> Iterator[tuple[StateStore, RawWrite]]:
    """A state store and a way to write a document straight into its backend, past every check."""
    if request.param == "mongo":
        url = request.getfixturevalue("mongo_url")
        store = open_state_store(url)
        client = pymongo.MongoClient(url)
        database = client.get_default_database()

        def write(table: str, doc: dict, parent: str | None, sort: float) -> None:
            database[table].insert_one({**doc, "_id": doc["id"]})

        yield store, write
        client.close()
    else:
        path = tmp_path / "state.db"
        store = open_state_store(f"sqlite:///{path}")
        db = sqlite3.connect(path)

        def write(table: str, doc: dict, parent: str | None, sort: float) -> None:
            db.execute(
                f"INSERT INTO {table} (id, parent, sort, doc) VALUES (?, ?, ?, ?)",
                (doc["id"], parent, sort, json.dumps(doc)),
            )
            db.commit()

        yield store, write
        db.close()
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


_LISTED = {"models/a": b"a", "models/b/c": b"bc", "models-x": b"xyz", "partials/r1/c1": b"p" * 10}


def _listing(models: ModelStore, prefix: str = "") -> list[tuple[str, int]]:
    return [(obj.key, obj.size) for obj in models.list_keys(prefix)]


def test_list_keys_by_prefix_sorted_with_sizes_and_times(models: ModelStore):
    before = time.time()
    for key, data in _LISTED.items():
        models.put(key, data)
    after = time.time()
    listed = list(models.list_keys())
    assert all(isinstance(obj, StoredObject) for obj in listed)
    assert [(obj.key, obj.size) for obj in listed] == sorted((k, len(v)) for k, v in _LISTED.items())
    assert all(before - 2.0 <= obj.modified_at <= after + 2.0 for obj in listed)  # S3 keeps whole seconds
    assert _listing(models, "models/") == [("models/a", 1), ("models/b/c", 2)]
    assert _listing(models, "models") == [("models-x", 3), ("models/a", 1), ("models/b/c", 2)]
    assert _listing(models, "partials/r1/c") == [("partials/r1/c1", 10)]
    for prefix in ("nothing/", "models/b/c/", "../", "/models", "models\x00/"):
        assert _listing(models, prefix) == []
    models.delete("models/a")
    assert _listing(models, "models/") == [("models/b/c", 2)]


def test_list_keys_same_from_every_backend(request, tmp_path: Path):
    """Differential: the directory and S3 list the same keys and sizes for the same prefixes."""
    backends = [open_model_store((tmp_path / "models").as_uri()), open_model_store(request.getfixturevalue("s3_url"))]
    keys = ["a-b", "a/b", "a/b-c", "a/bc/d", "a0", "b/\u00e9t\u00e9", "b/z", "Z"]  # '-' < '/' < '0' < 'Z' < 'b'
    for store in backends:
        for i, key in enumerate(keys):
            store.put(key, b"x" * i)
    listings = [[_listing(store, prefix) for prefix in ("", "a", "a/", "a/b", "b/", "c")] for store in backends]
    assert listings[0] == listings[1]
    assert [key for key, _ in listings[0][0]] == sorted(keys)
    for store in backends:
        store.close()


@pytest.mark.parametrize(
    "key",
    [
        "../escape",
        "/abs/path",
        "",
        "a//b",
        "a/./b",
        "nul\x00byte",
        "line\nbreak",
        "long/" + "x" * 256,  # one segment over 255 bytes
        "/".join(["y" * 200] * 6),  # over 1024 bytes in all
        "\ud800",  # not UTF-8
    ],
)
def test_model_keys_cannot_escape(models: ModelStore, key: str):
    for call in (lambda: models.put(key, b"x"), lambda: models.get(key), lambda: models.exists(key)):
        with pytest.raises(InvalidArgument):
            call()


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
            [s.id for s in store.list_sessions(limit=0)],
            [c.id for c in store.list_clients(limit=0)],
        ]
        for store in backends
    ]
    assert pages[0] == pages[1]
    for store in backends:
        store.close()


def _broken(record, **fields) -> dict:
    return {**record.model_dump(mode="json"), **fields}


def test_unreadable_records_are_skipped_by_lists_and_refused_by_gets(state_and_raw, caplog):
    state, write = state_and_raw
    good = [_session(i) for i in range(3)]
    for s in good:
        state.put_session(s)
    bad_nan = _broken(_session(5), id="bad-nan", config={"lr": None, "pad": "p" * 5000})
    bad_missing = {k: v for k, v in _broken(_session(6), id="bad-missing").items() if k != "rounds"}
    write("sessions", bad_nan, None, bad_nan["created_at"])
    write("sessions", bad_missing, None, bad_missing["created_at"])
    round_ok = Round(session_id="s", index=1, model_in="m")
    state.put_round(round_ok)
    write("rounds", _broken(Round(session_id="s", index=2, model_in="m"), id="bad-round", status="exploded"), "s", 2)
    state.put_model(ModelRecord(id="model-ok", key="k", sha256="0", size_bytes=1, num_parameters=1, created_at=1.0))
    bad_model = _broken(ModelRecord(key="k", sha256="0", size_bytes=1, num_parameters=1), id="bad-model")
    write("models", {**bad_model, "size_bytes": "many"}, None, 2.0)
    state.put_client(ClientRecord(id="client-ok", name="c", assigned_at=1.0))
    write("clients", _broken(ClientRecord(name="c"), id="bad-client", status=None), None, 2.0)
    state.put_combiner(CombinerRecord(id="combiner-ok", name="c", address="h:1", registered_at=1.0))
    write(
        "combiners",
        _broken(CombinerRecord(id="x", name="c", address="h:1"), id="bad-combiner", address=None),
        None,
        2.0,
    )

    with caplog.at_level(logging.WARNING, logger="fedn.store"):
        for _ in range(3):  # a caller listing in a loop
            assert [s.id for s in state.list_sessions()] == [s.id for s in reversed(good)]
            assert [r.id for r in state.list_rounds("s")] == [round_ok.id]
            assert [m.id for m in state.list_models()] == ["model-ok"]
            assert [c.id for c in state.list_clients()] == ["client-ok"]
            assert [c.id for c in state.list_combiners()] == ["combiner-ok"]

    for getter, bad_id in [
        (state.get_session, "bad-nan"),
        (state.get_session, "bad-missing"),
        (state.get_round, "bad-round"),
        (state.get_model, "bad-model"),
        (state.get_client, "bad-client"),
        (state.get_combiner, "bad-combiner"),
    ]:
        with pytest.raises(InvalidArgument, match=f"{bad_id} does not validate"):
            getter(bad_id)
    assert state.get_session(good[0].id) == good[0]
    reports = [r.getMessage() for r in caplog.records]
    for bad_id in ("bad-nan", "bad-missing", "bad-round", "bad-model", "bad-client", "bad-combiner"):
        assert sum(bad_id in line for line in reports) == 1, reports
    assert "config.lr" in next(line for line in reports if "bad-nan" in line)
    assert all(len(line) < 500 and "ppppp" not in line for line in reports)


def test_records_that_would_not_read_back_are_refused(state: StateStore):
    session = Session(rounds=1, seed_model_id="m", model_id="m", config={"lr": float("nan")})
    with pytest.raises(InvalidArgument, match=r"config\.lr"):
        state.put_session(session)
    with pytest.raises(NotFound):
        state.get_session(session.id)
    with pytest.raises(InvalidArgument, match=r"config\.steps does not fit in 64 bits"):
        state.put_session(session.model_copy(update={"config": {"steps": 2**63}}))
    state.put_session(session.model_copy(update={"config": {"lr": 0.1, "steps": 2**63 - 1}}))
    assert [s.config for s in state.list_sessions()] == [{"lr": 0.1, "steps": 2**63 - 1}]


@pytest.mark.parametrize("limit, offset", [(10, 2**63), (2**63, 0), (-1, 0), (10, -1)])
def test_pages_out_of_range_are_invalid_arguments(state: StateStore, limit: int, offset: int):
    with pytest.raises(InvalidArgument):
        state.list_sessions(limit=limit, offset=offset)
    with pytest.raises(InvalidArgument):
        state.list_models(limit=limit, offset=offset)


def test_unknown_store_schemes_are_rejected():
    with pytest.raises(InvalidArgument, match="sqlite"):
        open_state_store("postgres://x")
    with pytest.raises(InvalidArgument, match="file"):
        open_model_store("ftp://x")


def _event(i: int, **fields) -> AuditEvent:
    base = dict(
        id=f"e{i:03d}",
        time=1000.0 + i,
        subject=f"user{i % 3}",
        role="admin",
        peer="127.0.0.1:5000",
        action="session.create" if i % 2 else "model.upload",
        target=f"t{i}",
        outcome="ok",
    )
    return AuditEvent(**{**base, **fields})


def test_audit_append_list_filter_and_page(state: StateStore):
    for i in (3, 0, 4, 1, 2, 5):  # written out of order: listed by time, newest first
        state.append_audit(_event(i))
    assert [e.id for e in state.list_audit()] == ["e005", "e004", "e003", "e002", "e001", "e000"]
    assert state.list_audit(limit=2) == [_event(5), _event(4)]
    assert [e.id for e in state.list_audit(limit=2, before=1004.0)] == ["e003", "e002"]
    assert [e.id for e in state.list_audit(action="session.create")] == ["e005", "e003", "e001"]
    assert [e.id for e in state.list_audit(subject="user1")] == ["e004", "e001"]
    assert [e.id for e in state.list_audit(subject="user1", action="model.upload")] == ["e004"]
    assert state.list_audit(before=1000.0) == []
    assert state.list_audit(limit=0) == []
    state.append_audit(_event(2, detail="again"))  # a retried write replaces, never duplicates
    assert [e.detail for e in state.list_audit() if e.id == "e002"] == ["again"]


def test_audit_prune_removes_only_older_events(state: StateStore):
    for i in range(5):
        state.append_audit(_event(i))
    assert state.prune_audit(1002.0) == 2
    assert [e.id for e in state.list_audit()] == ["e004", "e003", "e002"]
    assert state.prune_audit(1002.0) == 0


@pytest.mark.parametrize("bad", [{"limit": -1}, {"limit": 2**63}, {"before": float("nan")}, {"before": float("inf")}])
def test_audit_listing_arguments_are_checked(state: StateStore, bad: dict):
    with pytest.raises(InvalidArgument):
        state.list_audit(**bad)


def _token(i: int, **fields) -> TokenRecord:
    base = dict(id=f"jti{i}", subject=f"client{i}", role="client", issued_at=100.0 + i, expires_at=200.0 + i)
    return TokenRecord(**{**base, "issued_by": "admin", **fields})


def test_tokens_put_get_list(state: StateStore):
    for i in range(4):
        state.put_token(_token(i))
    assert state.get_token("jti2") == _token(2)
    with pytest.raises(NotFound):
        state.get_token("nope")
    assert [t.id for t in state.list_tokens(now=150.0)] == ["jti3", "jti2", "jti1", "jti0"]
    assert [t.id for t in state.list_tokens(now=201.5)] == ["jti3", "jti2"]  # expires_at > now
    assert [t.id for t in state.list_tokens(now=201.5, include_expired=True)] == ["jti3", "jti2", "jti1", "jti0"]


def test_revoking_is_idempotent_and_lists_only_live_revoked_ids(state: StateStore):
    for i in range(4):
        state.put_token(_token(i))
    revoked = state.revoke_token("jti1", by="root", at=150.0)
    assert (revoked.revoked_at, revoked.revoked_by) == (150.0, "root")
    assert state.get_token("jti1") == revoked
    again = state.revoke_token("jti1", by="other", at=160.0)  # the first revocation stands
    assert again == revoked
    state.revoke_token("jti3", by="root", at=150.0)
    with pytest.raises(NotFound):
        state.revoke_token("nope", by="root", at=150.0)
    assert sorted(state.revoked_token_ids(150.0)) == ["jti1", "jti3"]
    assert state.revoked_token_ids(201.0) == ["jti3"]  # jti1 expired at 201: no longer worth sending
    assert state.revoked_token_ids(300.0) == []
    assert state.get_token("jti0").revoked_at is None


def test_audit_and_tokens_same_from_every_backend(request):
    """Differential: every backend pages and filters the audit log and tokens the same way."""
    backends = [open_state_store("sqlite://:memory:"), open_state_store(request.getfixturevalue("mongo_url"))]
    for store in backends:
        for i in range(25):
            store.append_audit(_event(i, time=1000.0 + i // 2))  # ties on time: ordered by id
            store.put_token(_token(i, issued_at=100.0 + i % 4))
        store.revoke_token("jti7", by="root", at=101.0)
    results = [
        [
            [e.id for e in store.list_audit(limit=7)],
            [e.id for e in store.list_audit(limit=5, before=1006.0, action="session.create")],
            [e.id for e in store.list_audit(subject="user2")],
            [t.id for t in store.list_tokens(now=210.0)],
            store.revoked_token_ids(205.0),
        ]
        for store in backends
    ]
    assert results[0] == results[1]
    for store in backends:
        store.close()


def test_clients_are_written_and_read_in_batches(state: StateStore):
    """A heartbeat brings thousands of clients at once: one write and one read for all of them, with the
    same records as one at a time."""
    clients = [
        ClientRecord(id=f"c{i:04d}", name=f"c{i}", combiner_id="comb-a", assigned_at=float(i)) for i in range(1200)
    ]
    state.put_clients(clients)
    state.put_clients([])
    assert state.count_clients() == 1200
    found = state.get_clients([c.id for c in clients[:1100]] + ["missing", "c0001"])
    assert len(found) == 1100 and "missing" not in found
    assert found["c0007"] == state.get_client("c0007") == clients[7]
    moved = clients[3].model_copy(update={"combiner_id": "comb-b", "name": "renamed"})
    state.put_clients([moved])  # replaces, as put_client does
    assert state.get_client("c0003") == moved and state.count_clients() == 1200
    assert state.get_clients([]) == {}
