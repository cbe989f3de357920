"""The production backends over real connections: streaming, readable documents, clear failures."""

from __future__ import annotations

import hashlib

import pymongo
import pytest

from fedn.errors import StoreError
from fedn.launcher import free_port
from fedn.records import Session
from fedn.store import open_model_store, open_state_store


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
