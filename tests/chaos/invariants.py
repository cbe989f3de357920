"""What must hold after any crash (DESIGN.md §9a), checked on the stores once a chaos run is over.

Each check reads the state store and the model store through ``fedn.store`` and returns violations,
each a dict ``{"invariant", "session", "detail"}``. The names:

- ``session_ended``: every acknowledged session is done, stopped, or failed with a non-empty reason;
- ``round_left_open``: no round of an ended session is still pending or running;
- ``acknowledged_write_lost``: every session (and seed model) the API answered 201 for exists;
- ``round_indexes``: the done rounds of a session are numbered 1..n with no gap (n = ``rounds_done``,
  and ``rounds`` for a done session);
- ``done_round_rerun``: no two done rounds share an index, and a round seen done during the run is
  unchanged at the end (same model, updates and finish time);
- ``one_model_per_round``: at most one model record per round index (sync) or version (async);
- ``parent_chain``: the first done round starts from the seed, each next one from the previous one's
  model, a done session's model is its last round's, and model records name that parent;
- ``model_stored``: every done round's model has a record and a blob whose sha256 and size match;
- ``partial_dropped`` (sync): a combiner's partial written before its round ended was merged, not
  dropped (the combiner is in the round and has no combiner-level failure);
- ``stop_holds``: a session whose stop the API acknowledged ends stopped (with who stopped it), or done or
  failed if it ended before the stop landed; once seen stopped, it is never resumed (no round is done
  after it, even across reducer restarts);
- ``failed_by_short_fault``: no session failed when every fault that landed in it was shorter than the
  round timeout (each is undone within seconds, and a round waits its whole deadline): an outage
  shorter than the deadline costs no session (issue 14);
- ``orphaned_after_gc``: after garbage collection, no model blob without a record and no partial of
  an ended round or of a round with no record (a violation only when garbage collection ran).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from fedn.errors import NotFound
from fedn.records import ModelRecord, Round, RoundStatus, Session, SessionMode
from fedn.store.base import ModelStore, StateStore

__all__ = [
    "Blob",
    "BlobLister",
    "LandedFault",
    "Ledger",
    "Orphans",
    "RoundSnapshot",
    "check_all",
    "count_orphans",
    "snapshot_of",
    "violation",
]

_ENDED_SESSION = {"done", "failed", "stopped"}
_OPEN_ROUND = {RoundStatus.PENDING, RoundStatus.RUNNING}
_MODELS, _PARTIALS = "models/", "partials/"


@dataclass(frozen=True)
class Blob:
    """One object in the model store's bucket, listed by the harness itself (``modified_at``: seconds since
    the epoch), so these checks do not depend on the store interface they are checking."""

    key: str
    size: int
    modified_at: float


BlobLister = Callable[[str], list[Blob]]  # every blob whose key starts with the prefix


def violation(invariant: str, session: str, detail: str) -> dict[str, str]:
    return {"invariant": invariant, "session": session, "detail": detail}


@dataclass(frozen=True)
class RoundSnapshot:
    """A done round as first seen during the run; it must look the same at the end."""

    round_id: str
    session_id: str
    index: int
    status: str
    model_out: str | None
    num_updates: int
    finished_at: float | None


def snapshot_of(round_: Round) -> RoundSnapshot:
    return RoundSnapshot(
        round_.id,
        round_.session_id,
        round_.index,
        str(round_.status),
        round_.model_out,
        round_.num_updates,
        round_.finished_at,
    )


@dataclass
class Ledger:
    """What the harness was acknowledged and saw while the faults ran."""

    sessions: dict[str, str] = field(default_factory=dict)  # session id -> mode, for each 201
    seed_models: list[str] = field(default_factory=list)  # model ids, for each 201
    done_rounds: dict[str, RoundSnapshot] = field(default_factory=dict)  # first sighting of each done round
    faults: dict[str, list[LandedFault]] = field(default_factory=dict)  # session id -> the faults that landed in it
    stops: set[str] = field(default_factory=set)  # sessions whose stop the API acknowledged
    stopped_at: dict[str, int] = field(default_factory=dict)  # rounds_done when first seen stopped
    round_timeout_s: float = 12.0  # of every session the harness starts

    def observe(self, rounds: Iterable[Round]) -> None:
        for r in rounds:
            if r.status == RoundStatus.DONE:
                self.done_rounds.setdefault(r.id, snapshot_of(r))

    def landed(self, session_id: str, what: str, down_s: float) -> None:
        """A fault landed in ``session_id``; what it hit was down (or frozen) ``down_s`` seconds."""
        self.faults.setdefault(session_id, []).append(LandedFault(what, down_s))


@dataclass(frozen=True)
class LandedFault:
    what: str
    down_s: float


@dataclass(frozen=True)
class Orphans:
    """Blobs nothing will read: model blobs with no record, partials of ended or unknown rounds."""

    models: list[str]
    partials: list[str]


def count_orphans(state: StateStore, list_blobs: BlobLister) -> Orphans:
    orphan_models = []
    for blob in list_blobs(_MODELS):
        model_id = blob.key[len(_MODELS) :].removesuffix(".safetensors")
        try:
            recorded = state.get_model(model_id).key == blob.key
        except NotFound:
            recorded = False
        if not recorded:
            orphan_models.append(blob.key)
    orphan_partials = []
    statuses: dict[str, RoundStatus | None] = {}
    for blob in list_blobs(_PARTIALS):
        round_id = blob.key[len(_PARTIALS) :].partition("/")[0]
        if round_id not in statuses:
            try:
                statuses[round_id] = state.get_round(round_id).status
            except NotFound:
                statuses[round_id] = None
        if statuses[round_id] not in _OPEN_ROUND:
            orphan_partials.append(blob.key)
    return Orphans(orphan_models, orphan_partials)


def check_all(
    state: StateStore,
    models: ModelStore,
    ledger: Ledger,
    *,
    partials_before_gc: list[Blob],
    orphans: Orphans,
    gc_ran: bool,
) -> list[dict[str, str]]:
    """Every invariant over every acknowledged session, then the seeds, the snapshots and the orphans."""
    found: list[dict[str, str]] = []
    partials = defaultdict(list)
    for blob in partials_before_gc:
        partials[blob.key[len(_PARTIALS) :].partition("/")[0]].append(blob)
    for session_id in ledger.sessions:
        try:
            session = state.get_session(session_id)
        except NotFound:
            found.append(violation("acknowledged_write_lost", session_id, "session created with 201 is gone"))
            continue
        rounds = state.list_rounds(session_id)
        records = state.list_models(session_id=session_id, limit=10_000)
        found += _check_session(session, rounds, records, models, partials)
        found += _short_fault_failure(session, ledger)
        found += _stop_holds(session, rounds, ledger)
    for model_id in ledger.seed_models:
        found += [violation("acknowledged_write_lost", "", d) for d in _model_problems(state, models, model_id)]
    found += _check_snapshots(state, ledger)
    if gc_ran:
        if orphans.models:
            detail = f"{len(orphans.models)} model blobs without a record, e.g. {orphans.models[:3]}"
            found.append(violation("orphaned_after_gc", "", detail))
        if orphans.partials:
            detail = f"{len(orphans.partials)} partials of ended or unknown rounds, e.g. {orphans.partials[:3]}"
            found.append(violation("orphaned_after_gc", "", detail))
    return found


def _check_session(
    session: Session,
    rounds: list[Round],
    records: list[ModelRecord],
    models: ModelStore,
    partials: dict[str, list[Blob]],
) -> list[dict[str, str]]:
    sid = session.id
    found = []
    status = str(session.status)
    if status not in _ENDED_SESSION:
        found.append(violation("session_ended", sid, f"status {status} at the end of the run"))
    elif status == "failed" and not (session.error or "").strip():
        found.append(violation("session_ended", sid, "failed with no reason"))
    if status in _ENDED_SESSION:
        for r in rounds:
            if r.status in _OPEN_ROUND:
                found.append(violation("round_left_open", sid, f"round {r.index} ({r.id}) is {r.status}"))

    done = sorted((r for r in rounds if r.status == RoundStatus.DONE), key=lambda r: r.index)
    indexes = Counter(r.index for r in done)
    for index, n in sorted(indexes.items()):
        if n > 1:
            ids = [r.id for r in done if r.index == index]
            found.append(violation("done_round_rerun", sid, f"index {index} is done {n} times: {ids}"))
    expected = list(range(1, len(indexes) + 1))
    if sorted(indexes) != expected:
        found.append(violation("round_indexes", sid, f"done indexes {sorted(indexes)}, expected {expected}"))
    if session.rounds_done != len(indexes):
        found.append(violation("round_indexes", sid, f"rounds_done {session.rounds_done}, done rounds {len(indexes)}"))
    if status == "done" and len(indexes) != session.rounds:
        found.append(violation("round_indexes", sid, f"done with {len(indexes)} of {session.rounds} rounds"))

    index_of = {r.id: r.index for r in rounds}
    per_index = Counter(index_of[m.round_id] for m in records if m.round_id in index_of)
    for index in sorted(indexes):
        if per_index[index] > 1:
            found.append(violation("one_model_per_round", sid, f"index {index} has {per_index[index]} model records"))
    unknown = [m.id for m in records if m.round_id and m.round_id not in index_of]
    if unknown:
        found.append(violation("one_model_per_round", sid, f"model records of rounds with no record: {unknown}"))

    by_id = {m.id: m for m in records}
    parent = session.seed_model_id
    for r in done:
        if r.model_in != parent:
            found.append(violation("parent_chain", sid, f"round {r.index} starts from {r.model_in}, not {parent}"))
        record = by_id.get(r.model_out or "")
        if record is not None and record.parent_id is not None and record.parent_id != r.model_in:
            found.append(
                violation("parent_chain", sid, f"model {record.id} of round {r.index} names parent {record.parent_id}")
            )
        parent = r.model_out
        for problem in _blob_problems(models, record, r.model_out):
            found.append(violation("model_stored", sid, f"round {r.index}: {problem}"))
        if session.mode == SessionMode.SYNC:
            found += _dropped_partials(sid, r, partials.get(r.id, []))
    if status == "done" and done and session.model_id != done[-1].model_out:
        found.append(violation("parent_chain", sid, f"session model {session.model_id} is not the last round's"))
    return found


def _stop_holds(session: Session, rounds: list[Round], ledger: Ledger) -> list[dict[str, str]]:
    sid, status = session.id, str(session.status)
    found = []
    if sid in ledger.stops:
        if status not in ("stopped", "done", "failed"):
            found.append(violation("stop_holds", sid, f"stop acknowledged, but the session is {status}"))
        if status == "stopped" and not session.stopped_by:
            found.append(violation("stop_holds", sid, "stopped with no stopped_by"))
    if sid in ledger.stopped_at:
        seen = ledger.stopped_at[sid]
        done = sum(r.status == RoundStatus.DONE for r in rounds)
        if status != "stopped" or session.rounds_done != seen or done != seen:
            detail = f"seen stopped after {seen} rounds; now {status} with {session.rounds_done} ({done} done rounds)"
            found.append(violation("stop_holds", sid, detail))
    return found


def _short_fault_failure(session: Session, ledger: Ledger) -> list[dict[str, str]]:
    """A failed session whose every fault (none counts too) was shorter than the round timeout."""
    if str(session.status) != "failed":
        return []
    faults = ledger.faults.get(session.id, [])
    if any(f.down_s >= ledger.round_timeout_s for f in faults):
        return []
    what = ", ".join(f"{f.what} {f.down_s:g}s" for f in faults) or "no fault"
    detail = f"failed after {what} (round timeout {ledger.round_timeout_s:g}s): {session.error or 'no reason'}"
    return [violation("failed_by_short_fault", session.id, detail)]


def _blob_problems(models: ModelStore, record: ModelRecord | None, model_id: str | None) -> list[str]:
    if not model_id:
        return ["done with no model_out"]
    if record is None:
        return [f"model {model_id} has no record in this session"]
    try:
        blob = models.get(record.key)
    except NotFound:
        return [f"model {model_id}'s blob {record.key} is missing"]
    problems = []
    digest = hashlib.sha256(blob).hexdigest()
    if digest != record.sha256:
        problems.append(f"model {model_id}'s blob hashes to {digest[:12]}, record says {record.sha256[:12]}")
    if len(blob) != record.size_bytes:
        problems.append(f"model {model_id}'s blob is {len(blob)} bytes, record says {record.size_bytes}")
    return problems


def _model_problems(state: StateStore, models: ModelStore, model_id: str) -> list[str]:
    try:
        record = state.get_model(model_id)
    except NotFound:
        return [f"seed model {model_id} uploaded with 201 has no record"]
    return [f"seed {p}" for p in _blob_problems(models, record, model_id)]


def _dropped_partials(sid: str, r: Round, blobs: list[Blob]) -> list[dict[str, str]]:
    found = []
    failed = {f.combiner_id for f in r.failures if f.combiner_id and not f.client_id}
    for blob in blobs:
        combiner = blob.key.rpartition("/")[2].removesuffix(".safetensors")
        written_before_end = r.finished_at is not None and blob.modified_at < r.finished_at
        if written_before_end and (combiner not in r.combiners or combiner in failed):
            detail = f"round {r.index}: {combiner}'s partial was stored before the round ended but not merged"
            found.append(violation("partial_dropped", sid, detail))
    return found


def _check_snapshots(state: StateStore, ledger: Ledger) -> list[dict[str, str]]:
    found = []
    for snap in ledger.done_rounds.values():
        try:
            now = snapshot_of(state.get_round(snap.round_id))
        except NotFound:
            found.append(violation("done_round_rerun", snap.session_id, f"done round {snap.index} record vanished"))
            continue
        if now != snap:
            found.append(
                violation("done_round_rerun", snap.session_id, f"done round {snap.index} changed: {snap} -> {now}")
            )
    return found
