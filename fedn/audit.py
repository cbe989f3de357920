"""The audit log: one record per security-relevant event, for operators and incident review.

Each event goes two ways: one JSON line on the ``fedn.audit`` logger (ship it with the service's
logs) and, where there is a state store (the reducer), one :class:`~fedn.records.AuditEvent` that
admins read over REST (``GET /api/v1/audit``) and the CLI (``fedn audit list``). A combiner has no
state store and only logs: ``AuditLog(None, clock)``.

Auditing never takes the API down: a state store failure is logged, the event waits in a bounded
in-memory queue, and the queue is written once the store answers again (retried at most every
``retry_interval_s``, or at once by :meth:`AuditLog.flush`). Past ``max_pending`` events the oldest
are dropped from the queue and counted; their JSON lines were logged all the same.

No field ever holds a credential: every free-text field is scrubbed of anything shaped like a
token (a JWT, ``Bearer ...``, ``token=...``, a URL's password), made one printable line and bounded,
so one line stays well under the log handler's message bound.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from fedn.clock import Clock
from fedn.errors import FednError, InvalidArgument
from fedn.ids import printable
from fedn.records import AuditEvent, new_id

if TYPE_CHECKING:  # the store backends' drivers are not needed to log only (a combiner)
    from fedn.store.base import StateStore

__all__ = [
    "ACTIONS",
    "DEFAULT_RETENTION_DAYS",
    "MAX_FIELD_CHARS",
    "OUTCOMES",
    "AuditLog",
    "scrub",
]

ACTIONS = frozenset(
    {
        "auth.denied",  # a request without a valid credential, or with the wrong role or identity
        "session.create",
        "session.stop",
        "model.upload",
        "model.download",
        "combiner.register",
        "token.issue",
        "token.revoke",
        "round.run",  # RunRound at a combiner
        "model.announce",  # AnnounceModel at a combiner
        "round.abandon",  # AbandonRound at a combiner: its session was stopped
        "update.rejected",  # a client's update refused by validation
        "client.assign",
    }
)
"""Every action the audit log knows; :meth:`AuditLog.record` refuses any other name."""

OUTCOMES = frozenset({"ok", "denied", "failed", "refused"})
"""ok: done; denied: not allowed (auth); failed: allowed but it went wrong; refused: invalid input."""

DEFAULT_RETENTION_DAYS = 90.0
"""Stored events older than this are pruned by the reducer (setting ``audit_retention_days``)."""

MAX_FIELD_CHARS = {"subject": 128, "role": 32, "peer": 128, "target": 256, "detail": 800}
"""The longest each free-text field may be, after scrubbing and escaping."""

_events = logging.getLogger("fedn.audit")  # the JSON lines, and nothing else
_logger = logging.getLogger("fedn.store.audit")  # trouble writing them to the state store

_B64URL = r"[A-Za-z0-9_-]"
_SECRETS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(?i)\b(bearer|basic)\s+\S+"), r"\1 [redacted]"),
    # a JWT: its header is base64url JSON, so it starts with eyJ ('{"'); any part after the header
    (re.compile(rf"(?<!{_B64URL})eyJ{_B64URL}*(?:\.{_B64URL}*)+"), "[token]"),
    # any other three long base64url parts joined by dots (a JWS whose header is not eyJ...)
    (re.compile(rf"(?<!{_B64URL}){_B64URL}{{16,}}\.{_B64URL}{{16,}}\.{_B64URL}{{16,}}"), "[token]"),
    (
        re.compile(r"(?i)\b(token|access_token|password|passwd|secret|secret_key|access_key|api_key)=[^\s&;,]+"),
        r"\1=[redacted]",
    ),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s]+@"), r"\1[redacted]@"),  # scheme://user:pass@
]


def scrub(text: str) -> str:
    """``text`` with everything shaped like a credential replaced by ``[token]`` or ``[redacted]``."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def _field(value: object, limit: int) -> str:
    """One scrubbed, printable line of at most ``limit`` characters.

    Scrubbed before escaping (``Bearer\\tX`` is still a bearer token) and after (escaping cannot
    reveal a token that control characters hid), then cut.
    """
    text = scrub(printable(scrub(str(value))))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class AuditLog:
    """Records audit events; safe to share between threads.

    ``clock`` paces retries after a state store failure; ``wall_time`` (seconds since the epoch)
    stamps events. Stamps strictly increase (by at least a microsecond) within one log, so the
    time cursor of :meth:`StateStore.list_audit` never skips an event.
    """

    def __init__(
        self,
        state: StateStore | None,
        clock: Clock,
        *,
        wall_time: Callable[[], float] = time.time,
        max_pending: int = 10_000,
        ship: bool = False,
        retry_interval_s: float = 5.0,
    ) -> None:
        self._state = state
        self._clock = clock
        self._wall_time = wall_time
        self._retry_interval_s = retry_interval_s
        self._pending: deque[AuditEvent] = deque()
        self._max_pending = max_pending
        self._ship = ship  # no store here (a combiner): keep events for take(), which sends them on
        self._lock = threading.Lock()
        self._last_time = 0.0
        self._retry_at: float | None = None  # set while the store is failing
        self._writing = False
        self._dropped = 0  # since the store last failed
        self._dropped_total = 0

    @property
    def pending(self) -> int:
        """Events waiting for the state store."""
        with self._lock:
            return len(self._pending)

    @property
    def dropped(self) -> int:
        """Events dropped from a full queue since this log started (their JSON lines were logged)."""
        with self._lock:
            return self._dropped_total

    def record(
        self,
        action: str,
        *,
        subject: str,
        role: str,
        peer: str,
        target: str,
        outcome: str,
        detail: str = "",
    ) -> AuditEvent:
        """Log and store one event; returns it as stored. Raises only for an action or outcome that is
        not in :data:`ACTIONS` / :data:`OUTCOMES` (a programming error), never for a store failure."""
        if action not in ACTIONS:
            raise InvalidArgument(f"unknown audit action {printable(str(action))[:64]!r}; one of {sorted(ACTIONS)}")
        if outcome not in OUTCOMES:
            raise InvalidArgument(f"unknown audit outcome {printable(str(outcome))[:64]!r}; one of {sorted(OUTCOMES)}")
        given = {"subject": subject, "role": role, "peer": peer, "target": target, "detail": detail}
        fields = {name: _field(value, MAX_FIELD_CHARS[name]) for name, value in given.items()}
        with self._lock:
            stamp = max(self._wall_time(), self._last_time + 1e-6)
            self._last_time = stamp
            event = AuditEvent(id=new_id(), time=stamp, action=action, outcome=outcome, **fields)
        line = {
            "time": _iso(event.time),
            "subject": event.subject,
            "role": event.role,
            "peer": event.peer,
            "action": event.action,
            "target": event.target,
            "outcome": event.outcome,
            "detail": event.detail,
        }
        _events.info(json.dumps(line, ensure_ascii=False))
        if self._state is not None or self._ship:
            self._enqueue(event)
            self._write_pending(force=False)
        return event

    def take(self, limit: int) -> list[AuditEvent]:
        """Up to ``limit`` queued events, oldest first, for a log that ships them (a combiner sends
        them to the reducer with its heartbeat); :meth:`give_back` them if the sending failed."""
        with self._lock:
            return [self._pending.popleft() for _ in range(min(limit, len(self._pending)))]

    def give_back(self, events: list[AuditEvent]) -> None:
        with self._lock:
            for event in reversed(events):
                if len(self._pending) >= self._max_pending:
                    self._dropped_total += 1
                    continue
                self._pending.appendleft(event)

    def store_from(self, source: str, *, time_s: float, action: str, outcome: str, **fields: str) -> None:
        """Store an event another process logged (a combiner's, sent with its heartbeat), its target
        prefixed with ``source``. Its fields are checked and scrubbed again here: the sender may lie
        about its own events, but cannot write anything else into the log."""
        if action not in ACTIONS or outcome not in OUTCOMES or not math.isfinite(time_s):
            raise InvalidArgument(f"audit event from {source}: unknown action or outcome, or a bad time")
        fields["target"] = f"{source}: {fields.get('target', '')}"
        values = {name: _field(fields.get(name, ""), limit) for name, limit in MAX_FIELD_CHARS.items()}
        event = AuditEvent(id=new_id(), time=time_s, action=action, outcome=outcome, **values)
        if self._state is not None:
            self._enqueue(event)
            self._write_pending(force=False)

    def flush(self) -> int:
        """Try to write every queued event now; how many are still queued (0 without a state store)."""
        self._write_pending(force=True)
        return self.pending

    def prune(self, retention_days: float = DEFAULT_RETENTION_DAYS) -> int:
        """Delete stored events older than ``retention_days``; how many. A store failure is logged
        and counts as 0, so a retention timer keeps running."""
        if not (math.isfinite(retention_days) and retention_days > 0):
            raise InvalidArgument(f"audit retention must be a positive number of days, not {retention_days!r}")
        if self._state is None:
            return 0
        cutoff = self._wall_time() - retention_days * 86400.0
        try:
            removed = self._state.prune_audit(cutoff)
        except FednError as exc:
            _logger.warning("audit: pruning events older than %s failed: %s", _iso(cutoff), exc.message)
            return 0
        if removed:
            _logger.info("audit: pruned %d events older than %s", removed, _iso(cutoff))
        return removed

    def _enqueue(self, event: AuditEvent) -> None:
        with self._lock:
            if len(self._pending) >= self._max_pending:
                self._pending.popleft()
                self._dropped += 1
                self._dropped_total += 1
            self._pending.append(event)

    def _write_pending(self, *, force: bool) -> None:
        """Write queued events in order until the queue is empty or the store fails. One thread writes
        at a time; others only enqueue, so a slow store holds up one request, not all of them."""
        with self._lock:
            waiting = self._retry_at is not None and self._clock.now() < self._retry_at
            if self._writing or (waiting and not force) or self._state is None:
                return
            self._writing = True
        written = 0
        try:
            while True:
                with self._lock:
                    if not self._pending:  # checked and released under one lock: no event is left behind
                        self._writing = False
                        break
                    event = self._pending.popleft()
                try:
                    self._state.append_audit(event)
                except InvalidArgument as exc:  # permanent: this event can never be stored
                    _logger.error("audit: event %s cannot be stored, dropped: %s", event.id, exc.message)
                    continue
                except Exception as exc:  # any store trouble: keep the event, retry later
                    self._requeue(event, exc)
                    return
                written += 1
        except BaseException:
            with self._lock:
                self._writing = False
            raise
        self._recovered(written)

    def _requeue(self, event: AuditEvent, exc: Exception) -> None:
        with self._lock:
            first_failure = self._retry_at is None
            self._retry_at = self._clock.now() + self._retry_interval_s
            if len(self._pending) >= self._max_pending:  # it is the oldest: it goes first
                self._dropped += 1
                self._dropped_total += 1
            else:
                self._pending.appendleft(event)
            queued = len(self._pending)
            self._writing = False
        if first_failure:
            message = exc.message if isinstance(exc, FednError) else f"{type(exc).__name__}: {exc}"
            _logger.warning(
                "audit: cannot write to the state store (%s); %d events queued, retrying every %.0f s",
                message,
                queued,
                self._retry_interval_s,
            )

    def _recovered(self, written: int) -> None:
        with self._lock:
            was_failing = self._retry_at is not None
            self._retry_at = None
            dropped, self._dropped = self._dropped, 0
        if was_failing:
            _logger.warning("audit: state store is back; wrote %d queued events", written)
        if dropped:
            _logger.warning("audit: %d audit events were dropped from a full queue (they were logged)", dropped)
