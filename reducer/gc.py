"""Garbage collection of the model store: what no round will read again and no record points to.

Two kinds of blob are removed:

- a combiner's partial (``partials/<round>/<combiner>``) once its round is done or failed, when it has
  been merged or refused for good; a partial whose round has no record is removed only when older
  than the grace period (an async combiner stores its partial before the reducer records its flush);
- a model blob (``models/<id>``) with no model record, older than the grace period: a model is
  stored before its record, so a young blob may be a record about to be written.

A partial of a round still pending or running is kept: a restarted reducer may need it. Ages are
judged on the store's wall-clock ``modified_at`` (seconds since the epoch).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fedn.clock import Clock, SystemClock
from fedn.errors import FednError, NotFound
from fedn.models import model_key
from fedn.records import RoundStatus
from fedn.store.base import ModelStore, StateStore, StoredObject

__all__ = ["GarbageCollector", "GcReport"]

logger = logging.getLogger(__name__)

_ENDED = (RoundStatus.DONE, RoundStatus.FAILED, RoundStatus.STOPPED)
_MODELS = "models/"
_PARTIALS = "partials/"


@dataclass(frozen=True)
class GcReport:
    """What one pass removed."""

    partials: int = 0
    models: int = 0
    bytes_freed: int = 0


class GarbageCollector:
    """Removes ended rounds' partials and unrecorded model blobs; :meth:`collect` is one pass, and
    :meth:`start` runs a pass every ``interval_s`` on the clock until :meth:`stop`."""

    def __init__(
        self,
        state: StateStore,
        models: ModelStore,
        *,
        grace_s: float = 3600.0,
        interval_s: float = 600.0,
        clock: Clock | None = None,
        wall_time: Callable[[], float] = time.time,
        after_pass: Callable[[], object] | None = None,
    ) -> None:
        """``wall_time`` (seconds since the epoch) judges the age of a blob; ``clock`` paces the passes;
        ``after_pass`` is other housekeeping run on the same schedule (pruning the audit log)."""
        self._state = state
        self._models = models
        self._grace_s = grace_s
        self._interval_s = interval_s
        self._clock = clock or SystemClock()
        self._wall_time = wall_time
        self._after_pass = after_pass
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="gc", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _loop(self) -> None:
        while not self._clock.wait(self._stop, self._interval_s):
            try:
                self.collect()
            except FednError as exc:  # the store is away: the next pass tries again
                logger.error("garbage collection: %s; next pass in %.0fs", exc.message, self._interval_s)
            if self._after_pass is not None:
                self._after_pass()

    def collect(self) -> GcReport:
        """One pass over the model store; raises StoreError if a store is away (nothing is half-done)."""
        oldest = self._wall_time() - self._grace_s
        partials, models, freed = 0, 0, 0
        statuses: dict[str, RoundStatus | None] = {}
        for blob in self._models.list_keys(_PARTIALS):
            round_id = blob.key[len(_PARTIALS) :].partition("/")[0]
            if round_id not in statuses:
                statuses[round_id] = self._round_status(round_id)
            status = statuses[round_id]
            if (status in _ENDED or (status is None and blob.modified_at < oldest)) and self._delete(blob):
                partials, freed = partials + 1, freed + blob.size
        for blob in self._models.list_keys(_MODELS):
            if blob.modified_at < oldest and not self._is_recorded(blob.key) and self._delete(blob):
                models, freed = models + 1, freed + blob.size
        report = GcReport(partials, models, freed)
        if partials or models:
            logger.info(
                "garbage collection: removed %d partials and %d unrecorded models, %d bytes", partials, models, freed
            )
        return report

    def _round_status(self, round_id: str) -> RoundStatus | None:
        try:
            return self._state.get_round(round_id).status
        except NotFound:
            return None

    def _is_recorded(self, key: str) -> bool:
        """Whether a model record points to the blob at ``key`` (any key not shaped as a model's is kept)."""
        model_id = key[len(_MODELS) :].removesuffix(".safetensors")
        if model_key(model_id) != key:
            return True
        try:
            return self._state.get_model(model_id).key == key
        except NotFound:
            return False

    def _delete(self, blob: StoredObject) -> bool:
        try:
            self._models.delete(blob.key)
        except NotFound:  # removed meanwhile
            return False
        return True
