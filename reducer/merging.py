"""Turning partials into the next global model, and the one way a round and its session fail.

Sync and async sessions are both given one :class:`Merger`. It folds partials (sync), adds a
flush's mean delta (async), steps the server optimizer, stores the new global model, marks the round
done and advances the session, in that order: each write comes after what it refers to is stored.

A round's end is idempotent. The optimizer's state key and the new model's id are derived from the
session and the round (:func:`~fedn.models.round_model_id`), so a merge written again after a crash
overwrites what the first attempt wrote instead of adding a second model. The model record is the
commit point: once it exists the round has ended, and :meth:`Merger.finish_ended` completes the
writes a crash cut short (round done, session advanced) instead of running the round again.

Nothing a combiner reports is trusted (DESIGN §9): each result is checked (:mod:`reducer.results`)
before its partial is read; every new global model is checked finite before anything of it is
stored; the global model is read through its record, whose sha256 its blob must match.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

import numpy as np

from fedn.aggregation import Partial, PartialMerge, add_delta, cast_like, partial_manifest
from fedn.aggregation.server_optimizers import ServerOptimizer
from fedn.clock import Clock
from fedn.codec import NamedArrays, TensorSpec, check_manifest, encode_model, manifest_of
from fedn.errors import ChecksumMismatch, FednError, InvalidArgument, NotFound
from fedn.metrics import ReducerMetrics, reducer_metrics
from fedn.models import load_model, load_verified, round_model_id, save_model
from fedn.records import Round, RoundResult, RoundStatus, Session, SessionMode, SessionStatus, now
from fedn.store.base import ModelStore, StateStore
from fedn.store.validation import clip
from reducer.results import check_result

__all__ = ["MergeRefused", "Merger", "PartialFolder", "PartialRefused"]

logger = logging.getLogger(__name__)

_OPEN = (RoundStatus.PENDING, RoundStatus.RUNNING)


class MergeRefused(FednError):
    """A merge cannot be made (its global model fails its checksum, ...); its round is already marked
    failed, and the session cannot go on."""


class PartialRefused(MergeRefused):
    """A partial could not be read, does not fit the global model or makes it non-finite; its round is
    already marked failed (an async session backs off that combiner and goes on)."""


class PartialFolder:
    """Reads and folds one round's partials one at a time, as their combiners return: the reducer holds
    the running sum and one partial, however many combiners there are or finish at once."""

    def __init__(
        self, models: ModelStore, like: list[TensorSpec] | None, metrics: ReducerMetrics | None = None
    ) -> None:
        self._models = models
        self._lock = threading.Lock()
        self.merge = PartialMerge(like)
        self._metrics = metrics if metrics is not None else reducer_metrics()

    def fold(self, result: RoundResult) -> str:
        """Fold ``result``'s partial; returns why it could not be ("" if it was)."""
        with self._lock:
            started = time.perf_counter()  # a measurement, not a deadline: the real clock
            try:
                arrays = load_model(self._models, result.partial_key)
            except FednError as exc:
                return f"partial unreadable: {exc.message}"
            try:
                self.merge.add(Partial(arrays, result.total_weight, result.num_updates))
            except FednError as exc:
                return f"partial refused: {exc.message}"
            finally:
                del arrays  # before the next fold reads its partial
            self._metrics.merge_seconds.labels("fold").observe(time.perf_counter() - started)
            return ""


class Merger:
    """Steps, stores and records merges for sync rounds and async flushes, and fails them."""

    def __init__(
        self,
        state: StateStore,
        models: ModelStore,
        clock: Clock,
        *,
        max_num_examples: float = 1e9,
        max_clients_per_combiner: int = 10_000,
        metrics: ReducerMetrics | None = None,
    ) -> None:
        """``max_num_examples`` bounds one update's weight (as at the combiners), so a result's total
        weight is at most its updates times it; ``max_clients_per_combiner`` bounds its client ids.
        Rounds and merges are counted in ``metrics`` (by default, this process's reducer metrics)."""
        self._metrics = metrics if metrics is not None else reducer_metrics()
        self._state = state
        self._models = models
        self._clock = clock
        self._max_num_examples = max_num_examples
        self._max_clients = max_clients_per_combiner

    def check_result(self, result: RoundResult, *, round_id: str, combiner_id: str) -> RoundResult:
        """``result`` if it is what round (or flush) ``round_id`` asked of ``combiner_id``: that round,
        that combiner, the partial key the reducer derives for them, a finite weight of at most
        ``num_updates x max_num_examples``, bounded metrics and client ids. ResultRefused otherwise."""
        return check_result(
            result,
            round_id=round_id,
            combiner_id=combiner_id,
            max_num_examples=self._max_num_examples,
            max_clients=self._max_clients,
        )

    def folder(self, model_id: str) -> PartialFolder:
        """A folder whose partials must match the global model ``model_id`` as its record lists it (if the
        record cannot be read, the first partial sets the shapes)."""
        try:
            tensors = self._state.get_model(model_id).tensors
        except FednError:
            tensors = []
        return PartialFolder(self._models, [TensorSpec.from_dict(t) for t in tensors] or None, self._metrics)

    def load_global(self, session: Session) -> NamedArrays:
        """The session's global model, through its record: ChecksumMismatch if its blob was replaced."""
        return load_verified(self._models, self._state.get_model(session.model_id))

    def _global_or_refuse(self, session: Session, round_: Round, started: float | None) -> NamedArrays:
        try:
            return self.load_global(session)
        except ChecksumMismatch as exc:  # no merge can build on it: the session cannot go on
            self.fail_round(round_, exc.message, started)
            raise MergeRefused(exc.message) from exc

    def apply_delta(self, session: Session, round_: Round, key: str, optimizer: ServerOptimizer) -> Session:
        """Merge an async flush: global + the partial's mean delta at ``key``, through the optimizer.

        Raises PartialRefused (after marking ``round_`` failed) if the partial is gone or does not fit
        the global model, which numpy would otherwise broadcast into it.
        """
        started = self._clock.now()
        current = self._global_or_refuse(session, round_, started)
        try:
            delta = load_model(self._models, key)
            check_manifest(partial_manifest(manifest_of(current)), manifest_of(delta), ordered=False)
        except (InvalidArgument, NotFound) as exc:
            reason = f"partial refused: {exc.message}"
            self.fail_round(round_, reason)
            raise PartialRefused(f"combiner {', '.join(round_.combiners)}: {reason}") from exc
        return self.apply(session, round_, add_delta(current, delta), optimizer, started=started, previous=current)

    def apply(
        self,
        session: Session,
        round_: Round,
        merged: Mapping[str, np.ndarray],
        optimizer: ServerOptimizer,
        *,
        started: float,
        num_partials: int = 1,
        previous: Mapping[str, np.ndarray] | None = None,
    ) -> Session:
        """Step the server optimizer from the session's global model (``previous``, read from the store if
        not given) towards ``merged``, store the new global (and the optimizer's state) and mark ``round_``
        done; returns the advanced session. ``started`` is on the clock, for the round's duration."""
        if previous is None:
            previous = self._global_or_refuse(session, round_, started)
        applying = time.perf_counter()
        if optimizer.step_count != session.strategy_step:  # a fresh one, or one whose last step was refused
            if session.strategy_state_key:
                optimizer.load_state(load_model(self._models, session.strategy_state_key), session.strategy_step)
            else:
                optimizer.load_state({}, session.strategy_step)
        new_global = cast_like(optimizer.step(previous, merged), previous)
        if bad := _non_finite(new_global):  # checked before anything of this merge is stored
            reason = f"the new global model is not finite (tensor {clip(bad)!r}): nothing stored"
            self.fail_round(round_, reason, started)
            raise PartialRefused(reason)
        state_key = session.strategy_state_key
        if optimizer.moments:  # stored before the round is marked done, so a restart continues from it
            state_key = _strategy_state_key(session, round_)
            self._models.put(state_key, encode_model(optimizer.state_arrays()))
        record = save_model(
            self._models,
            new_global,
            model_id=round_model_id(round_.id),
            session_id=session.id,
            round_id=round_.id,
            parent_id=session.model_id,
        )
        self._state.put_model(record)  # the commit point: from here on, a restart completes this round
        duration = self._clock.now() - started
        round_ = round_.model_copy(
            update={"status": RoundStatus.DONE, "model_out": record.id, "finished_at": now(), "duration_s": duration}
        )
        self._state.put_round(round_)
        session = self._advance(session, round_, state_key)
        self._metrics.merge_seconds.labels("apply").observe(time.perf_counter() - applying)
        self._metrics.round_ended(session.mode, "done", duration)
        loss = round_.metrics.get("train_loss")
        logger.info(
            "session %s %s %d done: %d updates from %d combiners, train_loss %s, %.2fs -> model %s",
            session.id,
            _unit(session),
            round_.index,
            round_.num_updates,
            num_partials,
            f"{loss.mean:.4f}" if loss else "-",
            duration,
            record.id,
        )
        return session

    def finish_ended(self, session: Session, round_: Round) -> Session | None:
        """Complete the end of ``round_`` (the session's next round or version) if it ended before the
        reducer stopped: its model record exists, but the round is not marked done or the session was
        not advanced. Returns the advanced session, or None if the round had not ended (run it again)."""
        if round_.index != session.rounds_done + 1 or round_.status == RoundStatus.FAILED:
            return None
        try:
            record = self._state.get_model(round_model_id(round_.id))
        except NotFound:
            return None
        if round_.status != RoundStatus.DONE or round_.model_out != record.id:
            started = round_.started_at
            round_ = round_.model_copy(
                update={
                    "status": RoundStatus.DONE,
                    "model_out": record.id,
                    "finished_at": now(),
                    "duration_s": None if started is None else max(0.0, record.created_at - started),
                }
            )
            self._state.put_round(round_)
            self._metrics.round_ended(session.mode, "done", round_.duration_s)
        state_key = _strategy_state_key(session, round_)
        if not self._models.exists(state_key):  # an optimizer without moments keeps no state
            state_key = session.strategy_state_key
        logger.info(
            "session %s %s %d had ended before the restart: completed, model %s",
            session.id,
            _unit(session),
            round_.index,
            record.id,
        )
        return self._advance(session, round_, state_key)

    def _advance(self, session: Session, round_: Round, state_key: str | None) -> Session:
        """The session moved on to ``round_``'s model; the optimizer has stepped once more."""
        session = session.model_copy(
            update={
                "model_id": round_.model_out,
                "rounds_done": round_.index,
                "updated_at": now(),
                "strategy_state_key": state_key,
                "strategy_step": session.strategy_step + 1,
            }
        )
        self._state.put_session(session)
        return session

    def fail_round(self, round_: Round, reason: str, started: float | None = None) -> Round:
        """Mark one round failed with ``reason``; its duration is known if ``started`` (on the clock) is."""
        round_ = round_.model_copy(
            update={
                "status": RoundStatus.FAILED,
                "reason": reason,
                "finished_at": now(),
                "duration_s": None if started is None else self._clock.now() - started,
            }
        )
        self._state.put_round(round_)
        self._metrics.round_ended(self._mode_of(round_), "failed", round_.duration_s)
        return round_

    def _mode_of(self, round_: Round) -> str:
        """The mode of the round's session, for its metrics (a failure is rare: one read is cheap)."""
        try:
            return self._state.get_session(round_.session_id).mode
        except FednError:
            return SessionMode.SYNC

    def fail(
        self, session: Session, reason: str, *, round_: Round | None = None, started: float | None = None
    ) -> Session:
        """The one way a session fails: ``round_`` (the round it failed in, if any) and every other round
        still pending or running are marked failed first, then the session, so nothing is left open."""
        if round_ is not None:
            self.fail_round(round_, reason, started)
        for open_ in self._state.list_rounds(session.id):
            if open_.status in _OPEN and (round_ is None or open_.id != round_.id):
                self.fail_round(open_, reason)
        error = reason if round_ is None else f"{_unit(session)} {round_.index} failed: {reason}"
        session = session.model_copy(update={"status": SessionStatus.FAILED, "error": error, "updated_at": now()})
        self._state.put_session(session)
        logger.error("session %s failed: %s", session.id, error)
        return session


def _non_finite(arrays: Mapping[str, np.ndarray]) -> str:
    """The name of the first floating-point tensor of ``arrays`` with a NaN or an infinity ("" if none)."""
    for name, array in arrays.items():
        a = np.asarray(array)
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            return name
    return ""


def _strategy_state_key(session: Session, round_: Round) -> str:
    """Where the optimizer's state after ``round_`` is kept: one key per index, rewritten by a re-run."""
    return f"sessions/{session.id}/strategy-state-{round_.index}.safetensors"


def _unit(session: Session) -> str:
    """What one merge is called: a round in a sync session, the version it made in an async one."""
    return "version" if session.mode == SessionMode.ASYNC else "round"
