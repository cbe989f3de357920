"""Session writes that a stop cannot undo, nor be undone by.

A session's record is written whole. The controller's thread writes it as rounds end (advanced,
done, failed); an admin's stop request, on an API thread, reads it and writes it back with the stop
marked. Unguarded, the two can each undo the other: a stop landing as a round ends wrote back the
session it had read, two rounds done where three were. Here every controller-thread write takes one
lock and carries the stop marker of a stop already requested, and the stop's read and write take the
same lock, so whichever comes second sees the first.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from fedn.records import Session, SessionStatus, now
from fedn.store.base import StateStore

__all__ = ["StopMarkedState"]


class StopMarkedState:
    """``state`` as the controller's thread writes to it; any other call goes to ``state`` itself.

    ``requests`` maps a session id to who asked to stop it (the controller's own record of stops).
    """

    def __init__(self, state: StateStore, requests: Mapping[str, str]) -> None:
        self._state = state
        self._requests = requests
        self._lock = threading.RLock()

    def put_session(self, session: Session) -> None:
        with self._lock:
            by = self._requests.get(session.id)
            if by and not session.stop_requested_by:
                session = session.model_copy(update={"stop_requested_by": by})
            self._state.put_session(session)

    def mark_stop(self, session_id: str, by: str) -> Session:
        """Mark a running session's stop on the record as it is now; a session that ended meanwhile is
        returned as it ended, unchanged."""
        with self._lock:
            session = self._state.get_session(session_id)
            if session.status not in (SessionStatus.PENDING, SessionStatus.RUNNING):
                return session
            session = session.model_copy(
                update={"stop_requested_by": session.stop_requested_by or by, "updated_at": now()}
            )
            self._state.put_session(session)
            return session

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)
