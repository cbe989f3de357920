"""The production backends over real connections: streaming, readable documents, clear failures."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from urllib.parse import quote

import pymongo
import pytest

from bench import store_writes
from fedn.errors import InvalidArgument, StoreError
from fedn.launcher import free_port
from fedn.records import Session
from fedn.store import MongoStateStore, SQLiteStateStore, open_model_store, open_state_store
from tests.store_servers import mongo_process, s3_server


def test_mongo_documents_are_readable(mongo_url):
    store = open_state_store(mongo_url)
    session = Session(rounds=3, seed_model_id="m0", model_id="m0", config={"epochs": 2})
    store.put_session(session)
    store.put_session(session)  # a retried write changes nothing
    raw = pymongo.MongoClient(mongo_url).get_default_database()
    doc = raw.sessions.find_one({"_id": session.id})
    assert doc["rounds"] == 3 and doc["config"] == {"epochs": 2} and doc["status"] == "pending"
    assert raw.sessions.count_documents({}) == 1
    assert any("session_id" in str(ix["key"]) for ix in raw.rounds.list_indexes())
    store.close()


def test_s3_streams_a_large_blob_in_parts(s3_url):
    store = open_model_store(s3_url)
    chunk = bytes(range(256)) * 4096  # 1 MiB
    digest = hashlib.sha256()

    def chunks():
        for i in range(20):
            piece = bytes([i]) + chunk[1:]
            digest.update(piece)
            yield piece

    assert store.put("models/big.safetensors", chunks()) == 20 * len(chunk)
    back = hashlib.sha256()
    sizes = []
    for piece in store.iter_chunks("models/big.safetensors", 1 << 20):
        back.update(piece)
        sizes.append(len(piece))
    assert back.hexdigest() == digest.hexdigest() and max(sizes) <= 1 << 20
    store.close()


def test_a_bucket_created_by_another_process_meanwhile_is_used(s3_url, monkeypatch):
    """The reducer and the combiners start together and each may create the bucket: the one that
    loses the race (told BucketAlreadyOwnedByYou) uses the bucket, it does not fail to start."""
    from minio import Minio

    open_model_store(s3_url).close()  # the winner made the bucket
    seen = []
    real = Minio.bucket_exists

    def not_yet(self, bucket):  # the loser checked just before the winner made it
        seen.append(bucket)
        return False if len(seen) == 1 else real(self, bucket)

    monkeypatch.setattr(Minio, "bucket_exists", not_yet)
    store = open_model_store(s3_url)
    assert store.put("models/x", iter([b"abc"])) == 3 and len(seen) == 2
    store.close()


def test_wrong_s3_secret_fails_at_start_without_leaking_it(s3_endpoint):
    endpoint, access, _ = s3_endpoint
    with pytest.raises(StoreError) as exc:
        open_model_store(f"s3://{access}:not-the-secret@{endpoint}/bucket")
    assert "not-the-secret" not in str(exc.value) and endpoint in str(exc.value)


def test_unreachable_stores_fail_fast_with_redacted_urls():
    port = free_port()
    with pytest.raises(StoreError) as exc:
        open_state_store(f"mongodb://fedn:hunter2@127.0.0.1:{port}/fedn")
    assert "hunter2" not in str(exc.value) and f"fedn:***@127.0.0.1:{port}" in str(exc.value)
    with pytest.raises(StoreError) as exc:
        open_model_store(f"s3://fedn:hunter2@127.0.0.1:{port}/models")
    assert "hunter2" not in str(exc.value) and f"127.0.0.1:{port}" in str(exc.value)


def test_mongo_writes_are_majority_and_journaled_by_default(mongo_url):
    store = open_state_store(mongo_url)
    assert store.write_concern.document == {"w": "majority", "j": True, "wtimeout": 10_000}
    store.put_session(Session(rounds=1, seed_model_id="m", model_id="m"))  # the server accepts it
    store.close()


@pytest.mark.parametrize(
    "options, expected",
    [
        ("&w=1&journal=false&wtimeoutMS=500", {"w": 1, "j": False, "wtimeout": 500}),
        ("&w=1", {"w": 1, "j": True, "wtimeout": 10_000}),
        ("&journal=false", {"w": "majority", "j": False, "wtimeout": 10_000}),
    ],
)
def test_mongo_write_concern_from_the_url(mongo_url, options, expected):
    store = open_state_store(mongo_url + options)
    assert store.write_concern.document == expected
    store.close()


def test_mongo_write_concern_the_server_cannot_meet_is_a_store_error(mongo_url):
    with pytest.raises(StoreError, match=r"data-bearing|UnsatisfiableWriteConcern") as exc:
        open_state_store(mongo_url + "&w=3")
    assert mongo_url.split(":")[2].split("@")[0] not in str(exc.value)  # the password


def test_acknowledged_mongo_writes_survive_kill_9_of_the_server(tmp_path):
    sessions = [Session(rounds=1, seed_model_id="m", model_id="m", created_at=float(i)) for i in range(20)]
    with mongo_process(tmp_path / "mongo") as server:
        store = MongoStateStore(server.url, timeout_s=2.0)
        for session in sessions:
            store.put_session(session)
        server.process.kill()
        server.process.wait(15)
        store.close()
    with mongo_process(tmp_path / "mongo") as server:
        store = MongoStateStore(server.url, timeout_s=5.0)
        assert sorted(s.id for s in store.list_sessions()) == sorted(s.id for s in sessions)
        store.close()


def test_mongo_outage_is_a_store_error(tmp_path):
    session = Session(rounds=1, seed_model_id="m", model_id="m")
    with mongo_process(tmp_path / "mongo") as server:
        store = MongoStateStore(server.url, timeout_s=0.5)
        store.put_session(session)
    for call in (lambda: store.put_session(session), lambda: store.get_session(session.id), store.list_sessions):
        with pytest.raises(StoreError, match="MongoDB"):
            call()
    store.close()


def test_s3_outage_is_a_store_error(tmp_path):
    with s3_server(tmp_path / "s3") as (endpoint, access, secret):
        store = open_model_store(f"s3://{access}:{quote(secret, safe='')}@{endpoint}/models")
        store.put("models/a", b"abc")
    calls = (
        lambda: store.put("models/b", b"x"),
        lambda: store.put("models/c", iter([b"x", b"y"])),
        lambda: store.get("models/a"),
        lambda: list(store.iter_chunks("models/a", 2)),
        lambda: store.exists("models/a"),
        lambda: store.delete("models/a"),
        lambda: list(store.list_keys("models/")),
    )
    for call in calls:
        with pytest.raises(StoreError, match="S3"):
            call()
    store.close()


def test_sqlite_is_wal_and_synchronous_full_by_default(tmp_path):
    path = tmp_path / "state.db"
    store = open_state_store(f"sqlite:///{path}")
    store.put_session(Session(rounds=1, seed_model_id="m", model_id="m"))
    assert store.synchronous == "FULL"
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()
    store.close()
    relaxed = open_state_store(f"sqlite:///{path}?synchronous=normal")
    assert relaxed.synchronous == "NORMAL" and len(relaxed.list_sessions()) == 1
    relaxed.close()
    for bad in ("?synchronous=sometimes", "?journal=off"):
        with pytest.raises(InvalidArgument):
            open_state_store(f"sqlite:///{path}{bad}")


def test_sqlite_locked_database_is_a_store_error(tmp_path):
    path = tmp_path / "state.db"
    store = SQLiteStateStore(str(path), busy_timeout_s=0.2)
    holder = sqlite3.connect(path)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked"):
            store.put_session(Session(rounds=1, seed_model_id="m", model_id="m"))
    finally:
        holder.rollback()
        holder.close()
    store.put_session(Session(rounds=1, seed_model_id="m", model_id="m"))  # usable once the lock is gone
    store.close()


def test_store_writes_bench_smoke(capsys, tmp_path):
    """The durability benchmark at a tiny size, so it never rots (timings not asserted)."""
    store_writes.main(["--writes", "20", "--dir", str(tmp_path)])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["backend"].split()[0], r["setting"]) for r in rows] == [
        ("sqlite", "synchronous=NORMAL"),
        ("sqlite", "synchronous=FULL"),
        ("mongodb", "w=1,j=false (driver default)"),
        ("mongodb", "w=majority,j=true"),
    ]
    assert all(r["writes"] == 20 and r["writes_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in rows)
