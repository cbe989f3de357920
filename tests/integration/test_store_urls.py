"""Replica-set and multi-host MongoDB URIs open a working state store; their secrets stay out of messages.

SecantusDB runs one host and answers as a one-member replica set named ``secantus``, so a seed list
naming it and a second, dead host is a real multi-host replica-set URI.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

import pytest

from fedn.errors import StoreError
from fedn.launcher import free_port
from fedn.records import Session
from fedn.store import MongoStateStore, open_state_store


def _with_hosts(url: str, hosts: str) -> str:
    """``url`` with its host list replaced by ``hosts``."""
    userinfo, rest = url.split("@", 1)
    return f"{userinfo}@{hosts}/{rest.split('/', 1)[1]}"


def _host(url: str) -> str:
    return url.split("@", 1)[1].split("/", 1)[0]


def test_a_replica_set_uri_with_several_seeds_opens_and_serves(mongo_url: str, caplog: pytest.LogCaptureFixture):
    dead = f"127.0.0.1:{free_port()}"
    url = _with_hosts(mongo_url, f"{_host(mongo_url)},{dead}") + "&replicaSet=secantus"
    password = mongo_url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    with caplog.at_level(logging.INFO, logger="fedn.store"):
        store = open_state_store(url)
    try:
        assert isinstance(store, MongoStateStore)
        session = Session(rounds=1, seed_model_id="m0", model_id="m0")
        store.put_session(session)
        assert store.get_session(session.id) == session
    finally:
        store.close()
    assert dead in caplog.text and password not in caplog.text


def test_the_same_server_under_two_names_is_one_deployment(mongo_url: str):
    port = _host(mongo_url).rsplit(":", 1)[1]
    store = open_state_store(_with_hosts(mongo_url, f"127.0.0.1:{port},localhost:{port}"))
    try:
        assert store.list_sessions() == []
    finally:
        store.close()


def test_a_multi_host_uri_that_reaches_nobody_is_a_store_error_without_the_password():
    hosts = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    with pytest.raises(StoreError) as caught:
        MongoStateStore(f"mongodb://fedn:{quote('pa/ss#wo?rd', safe='')}@{hosts}/fedn?replicaSet=rs0", timeout_s=0.5)
    assert "pa%2Fss" not in str(caught.value) and f"fedn:***@{hosts}" in str(caught.value)


def test_an_unescaped_password_is_refused_without_printing_it():
    secret = "pa/ss#wo?rd"
    with pytest.raises(StoreError, match="invalid MongoDB URL") as caught:
        MongoStateStore(f"mongodb://fedn:{secret}@127.0.0.1:{free_port()},127.0.0.1:{free_port()}/fedn")
    assert secret not in str(caught.value) and "pa/ss" not in str(caught.value)
