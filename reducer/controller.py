"""Runs sessions round by round. Every step is written to the state store before it is acted on."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fedn.aggregation import Partial, PartialMerge, cast_like, merge_metric_summaries
from fedn.aggregation.server_optimizers import ServerOptimizer, make_server_optimizer
from fedn.codec import TensorSpec, encode_model
from fedn.errors import FednError, StoreError
from fedn.models import load_model, model_key, save_model
from fedn.records import (
    ClientFailureRecord,
    CombinerRecord,
    Round,
    RoundPlan,
    RoundResult,
    RoundStatus,
    Session,
    SessionMode,
    SessionStatus,
    now,
)
from fedn.sampling import allocate_sample, sample_seed, sample_size
from fedn.store.base import ModelStore, StateStore
from reducer.buffered import AsyncSessionRunner
from reducer.gateway import CombinerGateway
from reducer.registry import CombinerRegistry

__all__ = ["Controller"]

logger = logging.getLogger(__name__)


class _PartialFolder:
    """Reads and folds one round's partials one at a time, as their combiners return: the reducer holds
    the running sum and one partial, however many combiners there are or finish at once."""

    def __init__(self, models: ModelStore, like: list[TensorSpec] | None) -> None:
        self._models = models
        self._lock = threading.Lock()
        self.merge = PartialMerge(like)

    def fold(self, result: RoundResult) -> str:
        """Fold ``result``'s partial; returns why it could not be ("" if it was)."""
        with self._lock:
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
            return ""


class Controller:
    """One background thread; sessions run one at a time, oldest first; running ones resume first."""

    def __init__(
        self,
        state: StateStore,
        models: ModelStore,
        registry: CombinerRegistry,
        gateway: CombinerGateway,
        *,
        rpc_grace_s: float = 15.0,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        self._state = state
        self._models = models
        self._registry = registry
        self._gateway = gateway
        self._rpc_grace_s = rpc_grace_s
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="controller", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        with self._registry.changed:
            self._registry.changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def wake(self) -> None:
        """A session was created: look for work now rather than at the next poll."""
        self._wake.set()

    # -- the loop ----------------------------------------------------------

    def _loop(self) -> None:
        outages = 0
        while not self._stop.is_set():
            session = None
            try:
                session = self._next_session()
                if session is None:
                    outages = 0
                    self._wake.wait(1.0)
                    self._wake.clear()
                    continue
                self.run_session(session)
                outages = 0
            except StoreError as exc:  # the store is away: nothing unstored was marked done; resume later
                delay = min(self._max_backoff_s, self._backoff_s * 2**outages)
                outages += 1
                where = f"session {session.id}: " if session else ""
                logger.error("controller: %s%s; retrying in %.1fs", where, exc.message, delay)
                self._stop.wait(delay)
            except Exception as exc:  # a bug or bad data must not loop: fail the session with the reason
                logger.exception("controller: session %s failed unexpectedly", session.id if session else "?")
                if session is not None:
                    self._fail_session(session.id, f"{type(exc).__name__}: {exc}")

    def _fail_session(self, session_id: str, error: str) -> None:
        try:
            session = self._state.get_session(session_id)
            for round_ in self._state.list_rounds(session_id):
                if round_.status in (RoundStatus.PENDING, RoundStatus.RUNNING):
                    self._state.put_round(
                        round_.model_copy(
                            update={
                                "status": RoundStatus.FAILED,
                                "reason": error,
                                "finished_at": now(),
                            }
                        )
                    )
            self._state.put_session(
                session.model_copy(
                    update={
                        "status": SessionStatus.FAILED,
                        "error": error,
                        "updated_at": now(),
                    }
                )
            )
        except FednError as exc:
            logger.error("controller: could not mark session %s failed: %s", session_id, exc.message)

    def _next_session(self) -> Session | None:
        sessions = self._state.list_sessions(limit=1000)
        running = [s for s in sessions if s.status == SessionStatus.RUNNING]
        pending = [s for s in sessions if s.status == SessionStatus.PENDING]
        queue = sorted(running, key=lambda s: s.created_at) + sorted(pending, key=lambda s: s.created_at)
        return queue[0] if queue else None

    def run_session(self, session: Session) -> Session:
        if session.status == SessionStatus.RUNNING:
            logger.info("session %s: resuming after round %d of %d", session.id, session.rounds_done, session.rounds)
        else:
            logger.info("session %s: starting, %d rounds", session.id, session.rounds)
        session = session.model_copy(update={"status": SessionStatus.RUNNING, "updated_at": now()})
        self._state.put_session(session)
        if session.mode == SessionMode.ASYNC:
            runner = AsyncSessionRunner(
                self._state,
                self._models,
                self._registry,
                self._gateway,
                self.apply_merge,
                self._stop,
                rpc_grace_s=self._rpc_grace_s,
            )
            session = runner.run(session)
            if session.status == SessionStatus.FAILED:
                return session
        else:
            existing = {r.index: r for r in self._state.list_rounds(session.id)}
            while session.rounds_done < session.rounds and not self._stop.is_set():
                index = session.rounds_done + 1
                round_ = existing.get(index) or Round(session_id=session.id, index=index, model_in=session.model_id)
                session = self.run_round(session, round_)
                if session.status == SessionStatus.FAILED:
                    return session
        if session.rounds_done >= session.rounds:
            session = session.model_copy(update={"status": SessionStatus.DONE, "updated_at": now()})
            self._state.put_session(session)
            logger.info("session %s: done, final model %s", session.id, session.model_id)
        return session

    # -- one round ---------------------------------------------------------

    def run_round(self, session: Session, round_: Round) -> Session:
        """Run one round; returns the session as updated (advanced, or failed with the reason)."""
        round_ = round_.model_copy(
            update={
                "status": RoundStatus.PENDING,
                "model_in": session.model_id,
                "model_out": None,
                "failures": [],
                "reason": None,
                "combiners": [],
                "started_at": None,
                "finished_at": None,
                "duration_s": None,
            }
        )
        self._state.put_round(round_)
        seen = self._registry.wait_for_clients(session.min_clients, session.round_timeout_s, self._stop)
        if self._stop.is_set():
            return session
        if seen < session.min_clients:
            return self._fail(session, round_, f"only {seen} clients connected, min_clients is {session.min_clients}")

        combiners = [c for c in self._registry.live() if c.num_clients > 0]
        shares: dict[str, int] = {}  # 0 = every client of that combiner
        if session.fraction < 1.0:
            counts = {c.id: c.num_clients for c in combiners}
            shares = allocate_sample(counts, sample_size(sum(counts.values()), session.fraction, session.min_clients))
            combiners = [c for c in combiners if shares[c.id] > 0]
        started = time.monotonic()
        round_ = round_.model_copy(
            update={
                "status": RoundStatus.RUNNING,
                "combiners": [c.id for c in combiners],
                "started_at": now(),
            }
        )
        self._state.put_round(round_)
        logger.info(
            "session %s round %d (%s): running on %s",
            session.id,
            round_.index,
            round_.id,
            ", ".join(c.id for c in combiners),
        )
        optimizer = make_server_optimizer(session.strategy, session.strategy_config)
        config = {**session.config, **optimizer.client_config()}
        plan = RoundPlan(
            round_id=round_.id,
            session_id=session.id,
            round_index=round_.index,
            model_id=session.model_id,
            aggregator=session.aggregator,
            aggregator_config=session.aggregator_config,
            config=config,
            timeout_s=session.round_timeout_s,
            sample_seed=sample_seed(session.seed, round_.index),
        )
        results: list[RoundResult] = []
        failures: list[ClientFailureRecord] = []
        partials = _PartialFolder(self._models, self._manifest_of(session.model_id))
        used: list[RoundResult] = []
        # The merge waits for the slowest combiner; what can be done before (reading and folding the
        # other partials, reading the current global model) is done while it works, one partial at a
        # time, so the reducer holds one partial, not one per combiner, and the merge only stores.
        with ThreadPoolExecutor(max_workers=len(combiners) + 1, thread_name_prefix="run-round") as pool:
            previous = pool.submit(load_model, self._models, model_key(session.model_id))
            futures = {
                c.id: pool.submit(
                    self._round_at,
                    c,
                    plan.model_copy(update={"max_clients": shares.get(c.id, 0)}),
                    session.round_timeout_s + self._rpc_grace_s,
                    partials,
                )
                for c in combiners
            }
            for combiner_id, future in futures.items():
                try:
                    result, unusable = future.result()
                except FednError as exc:
                    logger.warning("round %s: %s", round_.id, exc.message)
                    failures.append(ClientFailureRecord(client_id="", combiner_id=combiner_id, error=exc.message))
                    continue
                results.append(result)
                failures.extend(result.failures)
                if unusable:
                    logger.warning("round %s: combiner %s: %s", round_.id, combiner_id, unusable)
                    failures.append(ClientFailureRecord(client_id="", combiner_id=combiner_id, error=unusable))
                elif result.partial_key:
                    used.append(result)
        if self._stop.is_set():
            return session  # left running: a restarted reducer runs it again

        num_updates = sum(r.num_updates for r in used)
        round_ = round_.model_copy(
            update={
                "num_selected": sum(r.num_selected for r in results),
                "num_updates": num_updates,
                "num_rejected": sum(r.num_rejected for r in results),
                "total_weight": sum(r.total_weight for r in used),
                "failures": failures,
                "metrics": merge_metric_summaries((r.metrics, r.total_weight) for r in used),
            }
        )
        if num_updates < session.min_clients:
            reason = f"{num_updates} updates arrived, min_clients is {session.min_clients}"
            if failures:
                reason += "; " + "; ".join(f"{f.client_id or f.combiner_id}: {f.error}" for f in failures[:5])
            return self._fail(session, round_, reason, started)

        merged = partials.merge.finish()
        try:
            current = previous.result()
        except FednError:
            current = None  # apply_merge reads it again, and reports the error if it persists
        return self.apply_merge(session, round_, merged.arrays, optimizer, started, len(used), previous=current)

    def _manifest_of(self, model_id: str) -> list[TensorSpec] | None:
        """The global model's tensors as its record lists them, which partials must match; None if
        the record cannot be read (then the first partial sets them)."""
        try:
            tensors = self._state.get_model(model_id).tensors
        except FednError:
            return None
        return [TensorSpec.from_dict(t) for t in tensors] or None

    def _round_at(
        self, combiner: CombinerRecord, plan: RoundPlan, timeout_s: float, partials: _PartialFolder
    ) -> tuple[RoundResult, str]:
        """Run ``plan`` at one combiner and fold its partial in as soon as it is stored; returns the
        combiner's result and why its partial could not be used ("" if it was, or if it had none)."""
        result = self._gateway.run_round(combiner, plan, timeout_s)
        return result, partials.fold(result) if result.partial_key else ""

    def apply_merge(
        self,
        session: Session,
        round_: Round,
        merged: Mapping[str, np.ndarray],
        optimizer: ServerOptimizer,
        started: float,
        num_partials: int = 1,
        previous: Mapping[str, np.ndarray] | None = None,
    ) -> Session:
        """Step the server optimizer from the session's global model (``previous``, read from the store if
        not given) towards ``merged``, store the new global (and the optimizer's state) and mark ``round_``
        done; returns the advanced session."""
        if previous is None:
            previous = load_model(self._models, model_key(session.model_id))
        if session.strategy_state_key and optimizer.step_count < session.strategy_step:
            optimizer.load_state(load_model(self._models, session.strategy_state_key), session.strategy_step)
        new_global = optimizer.step(previous, merged)
        state_key = session.strategy_state_key
        if optimizer.moments:  # stored before the round is marked done, so a restart continues from it
            state_key = f"sessions/{session.id}/strategy-state-{round_.index}.safetensors"
            self._models.put(state_key, encode_model(optimizer.state_arrays()))
        record = save_model(
            self._models,
            cast_like(new_global, previous),
            session_id=session.id,
            round_id=round_.id,
            parent_id=session.model_id,
        )
        self._state.put_model(record)
        duration = time.monotonic() - started
        round_ = round_.model_copy(
            update={
                "status": RoundStatus.DONE,
                "model_out": record.id,
                "finished_at": now(),
                "duration_s": duration,
            }
        )
        self._state.put_round(round_)
        session = session.model_copy(
            update={
                "model_id": record.id,
                "rounds_done": round_.index,
                "updated_at": now(),
                "strategy_state_key": state_key,
                "strategy_step": optimizer.step_count,
            }
        )
        self._state.put_session(session)
        loss = round_.metrics.get("train_loss")
        logger.info(
            "session %s round %d done: %d updates from %d combiners, train_loss %s, %.2fs -> model %s",
            session.id,
            round_.index,
            round_.num_updates,
            num_partials,
            f"{loss.mean:.4f}" if loss else "-",
            duration,
            record.id,
        )
        return session

    def _fail(self, session: Session, round_: Round, reason: str, started: float | None = None) -> Session:
        round_ = round_.model_copy(
            update={
                "status": RoundStatus.FAILED,
                "reason": reason,
                "finished_at": now(),
                "duration_s": None if started is None else time.monotonic() - started,
            }
        )
        self._state.put_round(round_)
        session = session.model_copy(
            update={
                "status": SessionStatus.FAILED,
                "error": f"round {round_.index} failed: {reason}",
                "updated_at": now(),
            }
        )
        self._state.put_session(session)
        logger.error("session %s round %d failed: %s", session.id, round_.index, reason)
        return session
