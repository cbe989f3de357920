"""A fork server for the launcher: the federation's processes start from one warm interpreter.

Every process of ``fedn local`` is ``python -m fedn TIER start ...``. Started cold, each one spends most
of its first second importing numpy, grpc, pydantic, the stores and the user's client module, and on a
small machine those imports queue behind each other: seven processes took 5.5 s to import what one
took under 1 s. The fork server imports those modules once and forks each process from itself, so a
start costs a fork. Each child is still a process of its own (its own session, log file, environment and
exit code), runs exactly what ``python -m fedn ARGS`` runs, and is stopped by signals as before.

The server is single-threaded and creates nothing before it forks (no gRPC channel, no thread), so a
child starts as clean as a fresh interpreter that has imported the same modules. It speaks JSON lines
on its stdin/stdout with the launcher, reaps its children and reports their exit codes; all signals go
through it, so a pid is never signalled after it was reaped (and perhaps reused). When the launcher's
end of the pipe closes (it exited, or was killed), the server terminates its children and exits.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import logging
import os
import runpy
import select
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ForkServer", "ForkedProcess"]

logger = logging.getLogger(__name__)

_FEDN = ["-m", "fedn"]
_STOP_GRACE_S = 10.0


class ForkServer:
    """The launcher's side: starts the server, forks processes through it, learns their exit codes."""

    def __init__(self, preload: Sequence[str], env: dict[str, str]) -> None:
        argv = [sys.executable, "-m", "fedn.forkserver", *preload]
        self._proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True, bufsize=0
        )
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._spawned: dict[int, int | str] = {}  # request id -> pid, or the error text
        self._exited: dict[int, int] = {}  # pid -> exit code (negative: the signal that ended it)
        self._next_id = 0
        self._reader = threading.Thread(target=self._read, name="fedn-forkserver", daemon=True)
        self._reader.start()

    def can_fork(self, argv: Sequence[str]) -> bool:
        """Whether ``argv`` is a ``python -m fedn ...`` command of this interpreter (others are run as is)."""
        return len(argv) > 3 and argv[0] == sys.executable and list(argv[1:3]) == _FEDN and self.alive

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def spawn(self, argv: Sequence[str], env: dict[str, str], log_path: Path, timeout_s: float = 30.0) -> int:
        """Fork ``python -m fedn ARGS`` (``argv``) with ``env``, output to ``log_path``; returns its pid."""
        with self._lock:
            request = self._next_id = self._next_id + 1
        self._send({"op": "spawn", "id": request, "args": list(argv[3:]), "env": env, "log": str(log_path)})
        with self._changed:
            if not self._changed.wait_for(lambda: request in self._spawned or not self.alive, timeout_s):
                raise RuntimeError(f"the fork server did not start {argv[3:]} within {timeout_s:.0f}s")
            answer = self._spawned.pop(request, "the fork server exited")
        if isinstance(answer, str):
            raise RuntimeError(f"the fork server could not start {argv[3:]}: {answer}")
        return answer

    def signal(self, pid: int, signum: int) -> None:
        if self.alive:
            self._send({"op": "signal", "pid": pid, "sig": int(signum)})

    def returncode(self, pid: int) -> int | None:
        with self._lock:
            return self._exited.get(pid)

    def wait(self, pid: int, timeout_s: float | None) -> int | None:
        """The exit code of ``pid`` once it exited, or None after ``timeout_s``."""
        with self._changed:
            self._changed.wait_for(lambda: pid in self._exited or not self.alive, timeout_s)
            return self._exited.get(pid)

    def close(self) -> None:
        """End the server; it terminates whatever children are left (the launcher stopped its own first)."""
        with contextlib.suppress(OSError):
            if self._proc.stdin is not None:
                self._proc.stdin.close()
        try:
            self._proc.wait(_STOP_GRACE_S + 5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(5)

    def _send(self, message: dict) -> None:
        data = (json.dumps(message) + "\n").encode()
        with self._lock:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write(data)
            except (BrokenPipeError, OSError) as exc:
                raise RuntimeError("the fork server is gone") from exc

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            with self._changed:
                if "exited" in message:
                    self._exited[int(message["exited"])] = int(message["code"])
                elif "spawned" in message:
                    self._spawned[int(message["spawned"])] = int(message["pid"])
                elif "failed" in message:
                    self._spawned[int(message["failed"])] = str(message["error"])
                self._changed.notify_all()
        with self._changed:  # the server is gone: whoever waits learns it
            self._changed.notify_all()


class ForkedProcess:
    """What :class:`fedn.processes.ManagedProcess` needs of a child, for one forked by the server."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self.server = server
        self.pid = pid

    def poll(self) -> int | None:
        code = self.server.returncode(self.pid)
        if code is None and not self.server.alive:
            return self._gone()
        return code

    def wait(self, timeout: float | None = None) -> int:
        code = self.server.wait(self.pid, timeout)
        if code is None:
            if not self.server.alive:
                return self._gone()
            raise subprocess.TimeoutExpired([str(self.pid)], timeout or 0.0)
        return code

    def send_signal(self, signum: int) -> None:
        if self.server.alive:
            self.server.signal(self.pid, signum)
        else:  # the server died and cannot have reaped it since: signal the orphan directly
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    @property
    def returncode(self) -> int | None:
        return self.poll()

    def _gone(self) -> int:
        """The server died; its orphaned child was re-parented. Alive or not is all one can tell now."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return -int(signal.SIGKILL)
        return None  # type: ignore[return-value]


# -- the server --------------------------------------------------------------------------------------


def _retitle(args: list[str]) -> None:
    """Show the child as the command it runs (``ps``, ``top``, ``pgrep -f``), not as the fork server."""
    import setproctitle

    setproctitle.setproctitle(shlex.join([sys.executable, "-m", "fedn", *args]))


def _child(args: list[str], env: dict[str, str], log: str, keep: Sequence[int]) -> None:
    """In the forked child: become ``python -m fedn ARGS`` with ``env``, output to ``log``. Never returns."""
    code = 1
    try:
        os.setsid()
        for fd in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
            signal.signal(signum, signal.SIG_DFL if signum != signal.SIGINT else signal.default_int_handler)
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        os.close(null)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own stdio, open for its life
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        _retitle(args)  # before the environment is replaced: setproctitle needs it where the kernel put it
        os.environ.clear()
        os.environ.update(env)
        sys.argv = ["fedn", *args]
        try:
            runpy.run_module("fedn", run_name="__main__", alter_sys=True)  # what `python -m fedn` runs
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
    except BaseException:  # the set-up failed: say why where the output goes (the log, or the server's stderr)
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _serve(preload: Sequence[str]) -> None:
    for name in preload:  # what the children would import; a module that fails is the child's to report
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    inbox, outbox = sys.stdin.buffer, sys.stdout.buffer
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd does the work
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the launcher ends the server by closing its stdin
    children: set[int] = set()
    buffer = b""

    def report(message: dict) -> None:
        with contextlib.suppress(OSError):  # the launcher is gone: its children are stopped all the same
            outbox.write((json.dumps(message) + "\n").encode())
            outbox.flush()

    def reap() -> None:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)
            report({"exited": pid, "code": os.waitstatus_to_exitcode(status)})

    def handle(message: dict) -> None:
        if message.get("op") == "spawn":
            try:
                pid = os.fork()
            except OSError as exc:
                report({"failed": message["id"], "error": str(exc)})
                return
            if pid == 0:
                _child(message["args"], message["env"], message["log"], (wake_r, wake_w))  # stdio: replaced
            children.add(pid)
            report({"spawned": message["id"], "pid": pid})
        elif message.get("op") == "signal" and int(message["pid"]) in children:  # never a reaped pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(message["pid"]), int(message["sig"]))

    while True:
        readable, _, _ = select.select([inbox, wake_r], [], [])
        if wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
            reap()
        if inbox in readable:
            data = os.read(inbox.fileno(), 1 << 16)
            if not data:
                break  # the launcher is gone
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    handle(json.loads(line))
        reap()
    _stop_all(children, reap)


def _stop_all(children: set[int], reap) -> None:
    """SIGTERM every child left, SIGKILL those still there after the grace period."""
    import time

    for pid in list(children):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_GRACE_S
    while children and time.monotonic() < deadline:
        reap()
        time.sleep(0.05)
    for pid in list(children):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    while children:
        reap()
        time.sleep(0.01)


if __name__ == "__main__":
    _serve(sys.argv[1:])
