"""The session options ``compression`` and ``downlink_compression``: checked at the edge (REST, CLI),
kept on the session record, put into the round plan, and negotiated per client at the combiner."""

from __future__ import annotations

import numpy as np
import pytest

from combiner.compressed import negotiate, update_compression
from fedn.cli import main
from fedn.clock import ManualClock
from fedn.errors import InvalidArgument
from fedn.models import save_model
from fedn.records import Round, RoundPlan, RoundResult, Session
from fedn.session_options import session_compression
from fedn.wire import (
    TaskInfo,
    round_plan_from_proto,
    round_plan_to_proto,
    round_result_from_proto,
    round_result_to_proto,
)
from reducer.api import ApiContext
from reducer.app import create_app
from reducer.registry import CombinerRegistry


def test_session_compression_gives_canonical_texts_and_refuses_what_cannot_work():
    assert session_compression("int8", "float16") == ("int8:block=256", "float16")
    assert session_compression(None, "") == ("none", "none")
    assert session_compression("topk:ratio=0.05", None) == ("topk:ratio=0.05", "none")
    assert session_compression("none", "none", "evaluate") == ("none", "none")
    with pytest.raises(InvalidArgument, match="unknown compression codec 'int9'"):
        session_compression("int9", None)
    with pytest.raises(InvalidArgument, match="topk cannot compress a whole model"):
        session_compression(None, "topk")
    with pytest.raises(InvalidArgument, match="mode evaluate: nothing is trained"):
        session_compression("int8", None, "evaluate")
    with pytest.raises(InvalidArgument, match="need mode sync"):
        session_compression(None, "float16", "async")


def test_records_from_before_compression_read_none_and_the_plan_carries_the_codecs():
    old = Session.model_validate({"rounds": 2, "seed_model_id": "m", "model_id": "m"})
    assert (old.compression, old.downlink_compression) == ("none", "none")
    assert Round.model_validate({"session_id": "s", "index": 1, "model_in": "m"}).uplink_bytes == 0
    plan = RoundPlan(
        round_id="r1",
        session_id="s1",
        round_index=1,
        model_id="m1",
        compression="int8:block=64",
        downlink_compression="float16",
    )
    back = round_plan_from_proto(round_plan_to_proto(plan))
    assert (back.compression, back.downlink_compression) == ("int8:block=64", "float16")
    unsaid = round_plan_from_proto(
        round_plan_to_proto(RoundPlan(round_id="r", session_id="s", round_index=1, model_id="m"))
    )
    assert (unsaid.compression, unsaid.downlink_compression) == ("none", "none")
    result = RoundResult(round_id="r1", combiner_id="c", uplink_bytes=1234)
    assert round_result_from_proto(round_result_to_proto(result)).uplink_bytes == 1234


def test_a_client_gets_only_the_codecs_it_announced():
    task = TaskInfo("train", "r1", "s1", "m1", compression="int8:block=256", downlink_compression="float16")
    assert negotiate(task, frozenset()) == TaskInfo(
        "train", "r1", "s1", "m1", compression="none", downlink_compression="none"
    )
    both = negotiate(task, frozenset({"int8", "float16"}))
    assert (both.compression, both.downlink_compression) == ("int8:block=256", "float16")
    uplink_only = negotiate(task, frozenset({"int8"}))
    assert (uplink_only.compression, uplink_only.downlink_compression) == ("int8:block=256", "none")


def test_an_update_is_taken_raw_or_in_exactly_the_plans_codec():
    plan = RoundPlan(round_id="r1", session_id="s", round_index=1, model_id="m", compression="int8:block=256")
    assert update_compression("", plan) is None and update_compression("none", plan) is None
    assert update_compression("int8:block=256", plan).block == 256
    with pytest.raises(InvalidArgument, match="'float16', but round r1 takes 'int8:block=256' or uncompressed"):
        update_compression("float16", plan)
    with pytest.raises(InvalidArgument, match="int8:block=64"):
        update_compression("int8:block=64", plan)
    raw_plan = plan.model_copy(update={"compression": "none"})
    with pytest.raises(InvalidArgument, match="takes only uncompressed updates"):
        update_compression("int8:block=256", raw_plan)


def _http(stores):
    state, models = stores
    state.put_model(save_model(models, {"w": np.zeros(2, np.float32)}))
    registry = CombinerRegistry(state, combiner_timeout_s=10.0, clock=ManualClock())
    return state, create_app(ApiContext(state, models, registry, None)).test_client()


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"compression": "int9"}, "unknown compression codec 'int9'"),
        ({"downlink_compression": "topk"}, "topk cannot compress a whole model"),
        ({"compression": "int8:block=-1"}, "block"),
        ({"compression": "float16", "mode": "evaluate"}, "nothing is trained"),
        ({"compression": "int8", "mode": "async"}, "need mode sync"),
    ],
)
def test_rest_refuses_a_bad_compression_option_with_400(stores, body, detail):
    state, http = _http(stores)
    reply = http.post("/api/v1/sessions", json={"rounds": 1, **body})
    assert reply.status_code == 400 and detail in reply.get_json()["detail"], reply.get_json()
    assert state.list_sessions() == []


def test_rest_keeps_the_canonical_codec_texts_on_the_session(stores):
    state, http = _http(stores)
    reply = http.post("/api/v1/sessions", json={"rounds": 1, "compression": "INT8", "downlink_compression": "float16"})
    assert reply.status_code == 201, reply.get_json()
    session = state.get_session(reply.get_json()["id"])
    assert (session.compression, session.downlink_compression) == ("int8:block=256", "float16")
    plain = http.post("/api/v1/sessions", json={"rounds": 1}).get_json()
    assert (plain["compression"], plain["downlink_compression"]) == ("none", "none")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--compression", "int9"], "unknown compression codec 'int9'"),
        (["--downlink-compression", "topk"], "topk cannot compress a whole model"),
        (["--compression", "int8", "--mode", "async"], "need mode sync"),
    ],
)
def test_cli_refuses_a_bad_compression_option_with_exit_2_before_calling_the_reducer(capsys, argv, message):
    code = main(["session", "start", "--reducer", "http://127.0.0.1:9", *argv])
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--compression", "int9"], "unknown compression codec 'int9'"),
        (["--compression", "int8", "--mode", "async"], "need mode sync"),
    ],
)
def test_fedn_local_refuses_a_bad_compression_option_before_any_process_starts(capsys, argv, message):
    assert main(["local", "--client", "nowhere.module:Client", *argv]) == 2
    assert message in capsys.readouterr().err


def test_upload_slots_count_raw_bytes_when_a_selected_client_uploads_raw():
    """A client that announced no codec uploads raw: sizing the round's slots by compressed updates would
    let staged bytes pass --max-staged-bytes, so the slots are then sized for raw updates."""
    from combiner.clients import ClientHub
    from combiner.staging import UploadStager
    from fedn.codec import TensorSpec
    from fedn.compression import parse_compression

    clock = ManualClock()
    hub = ClientHub(clock)
    hub.connect("a", "a", frozenset({"int8"}))
    hub.connect("b", "b", frozenset())
    assert hub.all_announce(["a"], "int8") and not hub.all_announce(["a", "b"], "int8")
    assert hub.all_announce(["a", "gone"], "int8")  # a client no longer connected uploads nothing

    manifest = [TensorSpec("w", "float32", (1_000_000,))]  # 4 MB raw, about 1 MB in int8
    stager = UploadStager(clock, max_concurrent_uploads=8, max_staged_bytes=8 << 20)
    assert stager.upload_gate(manifest, lambda c: None, parse_compression("int8")).capacity == 8
    assert stager.upload_gate(manifest, lambda c: None, None).capacity == 2


def test_each_rounds_plan_names_that_rounds_share_of_a_topk_warmup(stores):
    import threading

    from fedn.aggregation.server_optimizers import make_server_optimizer
    from reducer.planning import Planner

    registry = CombinerRegistry(stores[0], combiner_timeout_s=5.0, clock=ManualClock())
    planner = Planner(registry, threading.Event(), rpc_grace_s=1.0)
    uplink, _ = session_compression("topk:warmup=2", None)
    session = Session(rounds=5, seed_model_id="m", model_id="m", compression=uplink)
    optimizer = make_server_optimizer("fedavg", {})
    texts = [planner.plan(session, optimizer, round_id=f"r{i}", index=i).compression for i in (1, 2, 3)]
    assert texts == ["topk:ratio=0.25", "topk:ratio=0.0625", "topk:ratio=0.01"]
