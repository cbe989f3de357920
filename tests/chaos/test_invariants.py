"""The invariant checks find what they are meant to find, on stores written by hand (no processes)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fedn.records import ClientFailureRecord, ModelRecord, Round, RoundStatus, Session, SessionStatus
from fedn.store import LocalModelStore, SQLiteStateStore
from tests.chaos.invariants import Blob, Ledger, Orphans, check_all, count_orphans, snapshot_of

NO_ORPHANS = Orphans([], [])


class World:
    """A state store and a model store holding one session with a chain of done rounds."""

    def __init__(self, tmp_path: Path, rounds: int = 3) -> None:
        self.state = SQLiteStateStore(":memory:")
        self.models = LocalModelStore(tmp_path / "models")
        self.ledger = Ledger()
        self.seed = self.model("seed")
        self.session = Session(rounds=rounds, seed_model_id=self.seed.id, model_id=self.seed.id)
        self.rounds: list[Round] = []
        parent = self.seed.id
        for index in range(1, rounds + 1):
            r = Round(session_id=self.session.id, index=index, model_in=parent, combiners=["c0", "c1"])
            out = self.model(f"round {index}", session_id=self.session.id, round_id=r.id, parent_id=parent)
            r.status, r.model_out, r.finished_at = RoundStatus.DONE, out.id, 1000.0 + index
            self.state.put_round(r)
            self.rounds.append(r)
            parent = out.id
        self.session.status, self.session.rounds_done, self.session.model_id = SessionStatus.DONE, rounds, parent
        self.state.put_session(self.session)
        self.ledger.sessions[self.session.id] = "sync"
        self.ledger.seed_models.append(self.seed.id)
        self.ledger.observe(self.rounds)

    def model(self, text: str, **fields: str) -> ModelRecord:
        blob = text.encode()
        record = ModelRecord(key="", sha256=hashlib.sha256(blob).hexdigest(), size_bytes=len(blob), num_parameters=1)
        record.key = f"models/{record.id}.safetensors"
        record = record.model_copy(update=fields)
        self.models.put(record.key, blob)
        self.state.put_model(record)
        return record

    def check(self, partials: list[Blob] | None = None, orphans: Orphans = NO_ORPHANS, gc_ran: bool = False) -> set:
        found = check_all(
            self.state, self.models, self.ledger, partials_before_gc=partials or [], orphans=orphans, gc_ran=gc_ran
        )
        return {v["invariant"] for v in found}


def test_a_consistent_session_has_no_violation(tmp_path: Path):
    assert World(tmp_path).check() == set()


def test_a_running_session_and_a_failure_without_reason_are_caught(tmp_path: Path):
    world = World(tmp_path)
    world.session.status = SessionStatus.RUNNING
    world.state.put_session(world.session)
    assert world.check() == {"session_ended"}
    world.session.status, world.session.error = SessionStatus.FAILED, " "
    world.state.put_session(world.session)
    assert world.check() == {"session_ended", "failed_by_short_fault"}  # no fault landed in it either


def test_a_round_left_running_in_a_done_session_is_caught(tmp_path: Path):
    world = World(tmp_path)
    world.state.put_round(Round(session_id=world.session.id, index=4, model_in="x", status=RoundStatus.RUNNING))
    assert world.check() == {"round_left_open"}


def test_a_lost_session_is_caught(tmp_path: Path):
    world = World(tmp_path)
    world.ledger.sessions["0123456789abcdef"] = "sync"
    assert world.check() == {"acknowledged_write_lost"}


def test_a_rerun_round_is_caught_by_index_and_by_snapshot(tmp_path: Path):
    world = World(tmp_path)
    second = world.rounds[1]
    rerun = second.model_copy(update={"id": "rerun000000000aa"})
    world.state.put_round(rerun)
    assert "done_round_rerun" in world.check()

    world = World(tmp_path / "again")
    world.state.put_round(world.rounds[1].model_copy(update={"num_updates": 7, "finished_at": 2000.0}))
    assert world.check() == {"done_round_rerun"}


def test_a_gap_in_the_indexes_is_caught(tmp_path: Path):
    world = World(tmp_path)
    world.state.put_round(world.rounds[1].model_copy(update={"status": RoundStatus.FAILED}))
    world.ledger.done_rounds.clear()
    assert "round_indexes" in world.check()


def test_two_models_for_one_round_are_caught(tmp_path: Path):
    world = World(tmp_path)
    first = world.rounds[0]
    world.model("duplicate", session_id=world.session.id, round_id=first.id, parent_id=first.model_in)
    assert world.check() == {"one_model_per_round"}


def test_a_broken_parent_chain_is_caught(tmp_path: Path):
    world = World(tmp_path)
    world.state.put_round(world.rounds[2].model_copy(update={"model_in": world.seed.id}))
    world.ledger.done_rounds.clear()
    assert world.check() == {"parent_chain"}


@pytest.mark.parametrize("damage", ["blob", "record", "bytes"])
def test_a_missing_or_corrupt_model_is_caught(tmp_path: Path, damage: str):
    world = World(tmp_path)
    record = world.state.get_model(world.rounds[1].model_out)
    if damage == "blob":
        world.models.delete(record.key)
    elif damage == "bytes":
        world.models.put(record.key, b"other bytes")
    else:
        world.state.put_model(record.model_copy(update={"session_id": "elsewhere0000000"}))
    assert world.check() == {"model_stored"}


def test_a_partial_stored_in_time_but_not_merged_is_caught(tmp_path: Path):
    world = World(tmp_path)
    r = world.rounds[0]
    world.state.put_round(
        r.model_copy(update={"failures": [ClientFailureRecord(client_id="", combiner_id="c1", error="x")]})
    )
    world.ledger.done_rounds.clear()
    early = Blob(f"partials/{r.id}/c1.safetensors", 10, r.finished_at - 1)
    late = Blob(f"partials/{r.id}/c1.safetensors", 10, r.finished_at + 1)
    assert world.check(partials=[late]) == set()
    assert world.check(partials=[early]) == {"partial_dropped"}


def test_orphans_count_and_become_violations_only_after_garbage_collection(tmp_path: Path):
    world = World(tmp_path)
    blobs = {
        "models/": [Blob("models/nobody0000000000.safetensors", 3, 0.0), Blob(world.seed.key, 4, 0.0)],
        "partials/": [Blob(f"partials/{world.rounds[0].id}/c0.safetensors", 3, 0.0)],
    }
    orphans = count_orphans(world.state, lambda prefix: blobs[prefix])
    assert orphans == Orphans(["models/nobody0000000000.safetensors"], [blobs["partials/"][0].key])
    assert world.check(orphans=orphans) == set()
    assert world.check(orphans=orphans, gc_ran=True) == {"orphaned_after_gc"}


def test_a_snapshot_records_what_must_not_change():
    r = Round(session_id="s", index=1, model_in="a", model_out="b", status=RoundStatus.DONE, num_updates=4)
    assert snapshot_of(r) == snapshot_of(r.model_copy(update={"metrics": {}}))
    assert snapshot_of(r) != snapshot_of(r.model_copy(update={"model_out": "c"}))


def test_a_session_failed_by_faults_shorter_than_the_round_timeout_is_caught(tmp_path: Path):
    world = World(tmp_path)
    world.ledger.round_timeout_s = 12.0
    world.ledger.landed(world.session.id, "s3", 1.5)
    world.ledger.landed(world.session.id, "combiner-1", 0.4)
    assert world.check() == set()  # done: the faults cost nothing
    world.session.status, world.session.error = SessionStatus.FAILED, "round 3 failed: 1 updates arrived"
    world.state.put_session(world.session)
    found = check_all(world.state, world.models, world.ledger, partials_before_gc=[], orphans=NO_ORPHANS, gc_ran=False)
    assert [v["invariant"] for v in found] == ["failed_by_short_fault"]
    assert "s3 1.5s" in found[0]["detail"] and "round 3 failed: 1 updates arrived" in found[0]["detail"]

    world.ledger.faults.clear()  # a session that failed with no fault at all is no better
    assert world.check() == {"failed_by_short_fault"}

    world.ledger.landed(world.session.id, "mongo", 30.0)  # an outage longer than a round may fail it
    assert world.check() == set()


def test_a_stopped_session_that_ran_on_or_was_resumed_is_caught(tmp_path: Path):
    world = World(tmp_path, rounds=3)
    world.ledger.stops.add(world.session.id)
    assert world.check() == set()  # it ended done before the stop landed: allowed
    # stopped after 2 rounds, seen so by the harness, with who stopped it
    world.rounds[2].status, world.rounds[2].model_out = RoundStatus.STOPPED, None
    world.state.put_round(world.rounds[2])
    world.session.status, world.session.rounds_done, world.session.stopped_by = SessionStatus.STOPPED, 2, "admin"
    world.session.model_id = world.rounds[1].model_out
    world.state.put_session(world.session)
    world.ledger.stopped_at[world.session.id] = 2
    world.ledger.done_rounds.pop(world.rounds[2].id)
    assert world.check() == set()
    world.session.stopped_by = None
    world.state.put_session(world.session)
    assert world.check() == {"stop_holds"}
    # a restarted reducer resumed it: a third round done after it was seen stopped
    world.session.stopped_by, world.session.status, world.session.rounds_done = "admin", SessionStatus.DONE, 3
    world.state.put_session(world.session)
    assert "stop_holds" in world.check()
