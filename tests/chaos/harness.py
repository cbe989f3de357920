"""A federation of real processes on real store protocols, and faults injected on a seeded schedule.

The federation: SecantusDB (MongoDB wire protocol) and nanio (S3), each on a free 127.0.0.1 port with
its data on disk; a :class:`~tests.chaos.proxy.WireProxy` between the reducer and MongoDB; the reducer,
two combiners and four :class:`~tests.chaos.clients.PacedClient` clients, started by
:class:`fedn.launcher.LocalFederation`. Sessions (sync and async) are created through the REST API one
after another; while each runs, the schedule's faults land in it:

``reducer`` ``combiner`` ``client`` ``mongo`` ``s3``
    kill -9 (of the process group) at a random moment, restarted after a short random delay; the
    stores come back on the same port and the same data directory.
``window``
    kill -9 of the reducer at an exact point between its store writes: the proxy forwards ``k`` more
    writes to ``rounds``/``sessions``/``models`` and holds the next one, the reducer is killed, the
    proxy drops the held connections and the reducer restarts.

The schedule (kinds, delays, ``k``) comes from ``random.Random(seed)``; process timing does not, so two
runs of one seed inject the same faults at about the same moments. Every process started here is
stopped when :meth:`ChaosRun.run` returns or raises. Nothing here waits without a bound.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from minio import Minio

from fedn.api_client import ReducerAPI
from fedn.codec import encode_model
from fedn.errors import FednError
from fedn.launcher import FederationSpec, LocalFederation, ManagedProcess, free_port
from fedn.records import SessionStatus
from fedn.store import ModelStore, StateStore, open_model_store, open_state_store
from tests.chaos.clients import PacedClient
from tests.chaos.invariants import Blob, BlobLister, Ledger, check_all, count_orphans
from tests.chaos.proxy import WireProxy
from tests.store_servers import RunningServer, mongo_process

__all__ = ["ALL_KINDS", "ChaosConfig", "ChaosRun", "Fault", "schedule"]

logger = logging.getLogger(__name__)

ALL_KINDS = ("reducer", "combiner", "client", "mongo", "s3", "window", "stop")
_WINDOW_COLLECTIONS = ("rounds", "sessions", "models")
_ENDED = {SessionStatus.DONE, SessionStatus.FAILED, "stopped"}
_CLIENT = "tests.chaos.clients:PacedClient"


@dataclass(frozen=True)
class Fault:
    """One scheduled fault: ``kind``, seconds after the session started (or the previous fault ended)
    before it lands, seconds dead before the restart, and the victim's index (combiner, client) or
    the number of writes let through (window)."""

    kind: str
    delay_s: float
    down_s: float
    target: int


def schedule(rng: random.Random, faults: int, kinds: tuple[str, ...], combiners: int, clients: int) -> list[Fault]:
    """``faults`` faults; kinds are drawn as shuffled bags, so every ``len(kinds)`` faults hold each kind once."""
    out: list[Fault] = []
    bag: list[str] = []
    for _ in range(faults):
        if not bag:
            bag = list(kinds)
            rng.shuffle(bag)
        kind = bag.pop()
        target = {
            "combiner": rng.randrange(combiners),
            "client": rng.randrange(clients),
            "window": rng.randint(0, 3),
            "stop": rng.randint(0, 1),  # 1: the reducer is killed right after it acknowledged the stop
        }
        out.append(Fault(kind, round(rng.uniform(0.1, 1.5), 2), round(rng.uniform(0.2, 2.0), 2), target.get(kind, 0)))
    return out


@dataclass
class ChaosConfig:
    faults: int
    seed: int
    modes: tuple[str, ...] = ("sync", "async")
    kinds: tuple[str, ...] = ALL_KINDS
    faults_per_session: int = 2
    combiners: int = 2
    clients: int = 4
    rounds: tuple[int, int] = (3, 5)  # per session, inclusive range
    round_timeout_s: float = 12.0
    train_s: float = 0.4
    session_timeout_s: float = 150.0  # waiting for one session to end
    ready_timeout_s: float = 20.0  # waiting for the federation to be whole again between sessions
    workdir: Path | None = None  # None: a temporary directory, removed afterwards
    keep_workdir: bool = False


@dataclass
class ChaosReport:
    """The counts a run prints as JSON."""

    seed: int
    modes: list[str]
    kinds: list[str]
    faults_scheduled: int = 0
    faults_injected: int = 0
    faults_by_kind: Counter = field(default_factory=Counter)
    sessions: int = 0
    sessions_finished: int = 0
    sessions_failed_with_reason: int = 0
    sessions_stopped: int = 0
    violations: list[dict[str, str]] = field(default_factory=list)
    violations_by_invariant: Counter = field(default_factory=Counter)
    faults_by_session: dict[str, list[str]] = field(default_factory=dict)
    session_modes: dict[str, str] = field(default_factory=dict)
    failure_reasons: dict[str, str] = field(default_factory=dict)  # failed sessions: their error, clipped
    orphans: dict[str, object] = field(default_factory=dict)
    recovery_timeouts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    workdir: str = ""
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "modes": self.modes,
            "kinds": self.kinds,
            "faults_scheduled": self.faults_scheduled,
            "faults_injected": self.faults_injected,
            "faults_by_kind": dict(sorted(self.faults_by_kind.items())),
            "sessions": self.sessions,
            "sessions_finished": self.sessions_finished,
            "sessions_failed_with_reason": self.sessions_failed_with_reason,
            "sessions_stopped": self.sessions_stopped,
            "violations_by_invariant": dict(sorted(self.violations_by_invariant.items())),
            "violations": self.violations,
            "faults_by_session": self.faults_by_session,
            "session_modes": self.session_modes,
            "failure_reasons": self.failure_reasons,
            "orphans": self.orphans,
            "recovery_timeouts": self.recovery_timeouts,
            "errors": self.errors,
            "workdir": self.workdir,
            "wall_s": round(self.wall_s, 1),
        }


def _kill(proc: ManagedProcess | None) -> None:
    """kill -9 of the process group (``ManagedProcess`` starts each child in its own session)."""
    if proc is None or proc.popen is None:
        return
    if proc.popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.popen.wait(10)


def _wait_for_port(port: int, timeout_s: float, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"server for port {port} exited while starting")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port} after {timeout_s:.0f}s")


class _S3Server:
    """nanio on one port and one data directory for the whole run, so a restart finds its blobs."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.access, self.secret = "fedn" + secrets.token_hex(4), secrets.token_urlsafe(24)
        workdir.mkdir(parents=True, exist_ok=True)
        argv = [str(Path(sys.executable).parent / "nanio"), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--data-dir", str(workdir / "data"), "--log-level", "warning", "--no-access-log"]
        self.process = ManagedProcess("s3", argv, workdir / "s3.log")

    def url(self, bucket: str) -> str:
        return f"s3://{quote(self.access, safe='')}:{quote(self.secret, safe='')}@127.0.0.1:{self.port}/{bucket}"

    def lister(self, bucket: str) -> BlobLister:
        """Lists the bucket over S3 with the minio client, not through the model store under test."""
        client = Minio(f"127.0.0.1:{self.port}", access_key=self.access, secret_key=self.secret, secure=False)

        def list_blobs(prefix: str) -> list[Blob]:
            # nanio writes each object to a ".tmp.<hex>" file beside it and renames it when complete; one
            # killed mid-write keeps that file and lists it as an object. It is the test server's own debris
            # (MinIO lists no incomplete upload), so it is left out rather than charged to fedn.
            return [
                Blob(o.object_name, o.size or 0, o.last_modified.timestamp() if o.last_modified else 0.0)
                for o in client.list_objects(bucket, prefix=prefix, recursive=True)
                if not o.object_name.rpartition("/")[2].startswith(".tmp.")
            ]

        return list_blobs

    def start(self) -> None:
        self.process = ManagedProcess("s3", self.process.argv, self.process.log_path)
        self.process.start({**os.environ, "NANIO_ACCESS_KEY": self.access, "NANIO_SECRET_KEY": self.secret})
        _wait_for_port(self.port, 30, self.process.is_running)

    def kill(self) -> None:
        _kill(self.process)


class _MongoServer:
    """SecantusDB through ``tests.store_servers.mongo_process``: same port, user and data on every start."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._stack: ExitStack | None = None
        self.server: RunningServer | None = None

    def start(self) -> None:
        stack = ExitStack()
        self.server = stack.enter_context(mongo_process(self._workdir))
        self._stack = stack

    def kill(self) -> None:
        if self.server is not None and self.server.process.poll() is None:
            self.server.process.kill()  # SIGKILL: SecantusDB is one process
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.server.process.wait(10)
        self.close()

    def close(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    @property
    def port(self) -> int:
        return int(self.url.rsplit("@", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])


def _start_again(old: ManagedProcess, env: dict[str, str]) -> tuple[ManagedProcess, list[str]]:
    """A process started again from ``old``'s command line. One that exits within 3 s (a port still
    taken, say) is started once more, up to 3 tries; what each early exit logged last is returned, so a
    federation that is not whole afterwards says why instead of staying one process short unnoticed."""
    exits: list[str] = []
    for _ in range(3):
        proc = ManagedProcess(old.name, old.argv, old.log_path)
        proc.start(env)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and proc.is_running():
            time.sleep(0.1)
        if proc.is_running():
            return proc, exits
        tail = old.log_path.read_text(errors="replace").strip().splitlines()[-1:] if old.log_path.exists() else []
        exits.append(f"{old.name} exited at restart: {tail[0][:300] if tail else 'no log'}")
    return proc, exits


class _Federation(LocalFederation):
    """LocalFederation with extra reducer settings and restarts of single combiners and clients."""

    def __init__(self, spec: FederationSpec, reducer_settings: dict[str, str]) -> None:
        super().__init__(spec, on_event=lambda message: logger.info("%s", message))
        self._reducer_settings = reducer_settings

    def _reducer_env(self) -> dict[str, str]:
        return {**super()._reducer_env(), **self._reducer_settings}

    def restart_combiner(self, index: int) -> list[str]:
        """Start combiner ``index`` again; returns why earlier tries exited at once (it is tried 3 times)."""
        env = self.combiner_env(self.combiners[index].name)
        self.combiners[index], exits = _start_again(self.combiners[index], env)
        return exits

    def restart_client(self, index: int) -> list[str]:
        self.clients[index], exits = _start_again(self.clients[index], self.client_env(self.clients[index].name))
        return exits

    def kill_all(self) -> None:
        for proc in self.processes:
            _kill(proc)


class ChaosRun:
    """One run: start everything, run sessions under the schedule's faults, stop everything, check."""

    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.report = ChaosReport(config.seed, list(config.modes), list(config.kinds))
        self.ledger = Ledger(round_timeout_s=config.round_timeout_s)
        self._faults = deque(schedule(self.rng, config.faults, config.kinds, config.combiners, config.clients))
        self.report.faults_scheduled = len(self._faults)
        self._mongo: _MongoServer | None = None
        self._s3: _S3Server | None = None
        self._proxy: WireProxy | None = None
        self._fed: _Federation | None = None
        self._state: StateStore | None = None
        self._models: ModelStore | None = None
        self._seed_blob = encode_model(PacedClient().initial_parameters())

    def run(self) -> ChaosReport:
        started = time.monotonic()
        cfg = self.config
        workdir = cfg.workdir or Path(tempfile.mkdtemp(prefix="fedn-chaos-"))
        workdir.mkdir(parents=True, exist_ok=True)
        self.report.workdir = str(workdir)
        try:
            self._start(workdir)
            try:
                self._drive()
            except (RuntimeError, FednError) as exc:  # e.g. a reducer that never came back: still check the stores
                self.report.errors.append(f"run aborted: {str(exc)[:500]}")
            self._finish()
        finally:
            self._stop_all()
            self.report.wall_s = time.monotonic() - started
            if cfg.workdir is None and not cfg.keep_workdir and not (self.report.violations or self.report.errors):
                shutil.rmtree(workdir, ignore_errors=True)
        return self.report

    # -- setup and teardown -------------------------------------------------

    def _start(self, workdir: Path) -> None:
        cfg = self.config
        self._mongo = _MongoServer(workdir / "mongo")
        self._mongo.start()
        self._s3 = _S3Server(workdir / "s3")
        self._s3.start()
        self._proxy = WireProxy(("127.0.0.1", self._mongo.port))
        self._proxy.start()
        direct = self._mongo.url
        # directConnection: SecantusDB names its own address in its hello reply, and a discovering driver
        # would go there, around the proxy.
        proxied = direct.replace(f":{self._mongo.port}/", f":{self._proxy.port}/") + "&directConnection=true"
        models_url = self._s3.url("chaos")
        self._state = open_state_store(direct)
        self._models = open_model_store(models_url)
        spec = FederationSpec(
            client=_CLIENT,
            client_args=[f"train_s={cfg.train_s}"],
            num_combiners=cfg.combiners,
            num_clients=cfg.clients,
            workdir=workdir / "fed",
            state_url=proxied,
            models_url=models_url,
            combiner_heartbeat_s=0.5,
            combiner_timeout_s=4.0,
            client_heartbeat_timeout_s=4.0,
        )
        # Garbage collection runs during the faults (a pass every 2 s) with a grace period longer than any
        # outage, so a blob stored just before its record is never taken for an orphan.
        settings = {
            "FEDN_REDUCER_GC_INTERVAL_S": "2",
            "FEDN_REDUCER_GC_GRACE_S": "60",
            "FEDN_REDUCER_RESUME_WAIT_S": "8",
            "FEDN_REDUCER_RPC_GRACE_S": "5",
        }
        self._fed = _Federation(spec, settings)
        self._fed.start(wait_timeout_s=60)
        self._fed.start_clients(wait_timeout_s=90)

    def _stop_all(self) -> None:
        if self._fed is not None:
            with contextlib.suppress(Exception):
                self._fed.stop()
            self._fed.kill_all()
        if self._proxy is not None:
            self._proxy.stop()
        for store in (self._state, self._models):
            if store is not None:
                with contextlib.suppress(Exception):
                    store.close()
        if self._s3 is not None:
            self._s3.kill()
        if self._mongo is not None:
            self._mongo.close()

    # -- sessions -----------------------------------------------------------

    def _drive(self) -> None:
        cfg = self.config
        planned = max(1, -(-cfg.faults // cfg.faults_per_session))
        limit = 2 * planned + 2  # faults that found no running session move on, but not for ever
        n = 0
        while n < limit and (n < planned or self._faults):
            mode = cfg.modes[n % len(cfg.modes)]
            n += 1
            self._wait_ready()
            session_id = self._create_session(mode)
            if session_id is not None:
                self._run_session(session_id)
        self.report.faults_scheduled -= len(self._faults)

    def _api(self) -> ReducerAPI:
        assert self._fed is not None
        return self._fed.api()  # with the admin token and the CA: the federation runs TLS and tokens

    def _retry(self, what: str, call: Callable[[ReducerAPI], object], timeout_s: float = 40.0) -> object | None:
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                with self._api() as api:
                    return call(api)
            except FednError as exc:
                last = str(exc)[:200]
                time.sleep(0.5)
        self.report.errors.append(f"{what}: gave up after {timeout_s:.0f}s: {last}")
        return None

    def _wait_ready(self) -> None:
        """Until every combiner and client is back (they reconnect on their own), bounded."""
        cfg = self.config
        deadline = time.monotonic() + cfg.ready_timeout_s
        health: dict = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(FednError), self._api() as api:
                health = api.health()
                whole = health.get("combiners_online", 0) >= cfg.combiners
                if whole and health.get("clients_online", 0) >= cfg.clients:
                    return
            time.sleep(0.3)
        self.report.recovery_timeouts.append(f"federation not whole after {cfg.ready_timeout_s:.0f}s: {health}")

    def _create_session(self, mode: str) -> str | None:
        cfg = self.config
        seed = self._retry("upload the seed model", lambda api: api.upload_model(self._seed_blob))
        if seed is None:
            return None
        self.ledger.seed_models.append(seed.id)
        params: dict[str, object] = {
            "rounds": self.rng.randint(*cfg.rounds),
            "min_clients": 2,
            "round_timeout_s": cfg.round_timeout_s,
            "model_id": seed.id,
            "seed": self.rng.randrange(1 << 16),
        }
        if mode == "async":
            params.update(mode="async", buffer_size=2)
        session = self._retry(f"start a {mode} session", lambda api: api.start_session(**params))
        if session is None:
            return None
        self.ledger.sessions[session.id] = mode
        self.report.session_modes[session.id] = mode
        self.report.sessions += 1
        logger.info("session %s (%s, %d rounds) started", session.id, mode, params["rounds"])
        return session.id

    def _run_session(self, session_id: str) -> None:
        """Poll the session until it ends (bounded), injecting up to ``faults_per_session`` faults into it."""
        cfg = self.config
        deadline = time.monotonic() + cfg.session_timeout_s
        injected = 0
        next_at = time.monotonic() + (self._faults[0].delay_s if self._faults else 0)
        while time.monotonic() < deadline:
            status = self._observe(session_id)
            if status in _ENDED:
                return
            if self._faults and injected < cfg.faults_per_session and time.monotonic() >= next_at:
                fault = self._faults[0]
                if self._inject(fault, session_id):
                    self._faults.popleft()
                    injected += 1
                    self.report.faults_injected += 1
                    self.report.faults_by_kind[fault.kind] += 1
                    next_at = time.monotonic() + (self._faults[0].delay_s if self._faults else 0)
                continue
            time.sleep(0.2)
        self.report.errors.append(f"session {session_id} still running after {cfg.session_timeout_s:.0f}s")

    def _observe(self, session_id: str) -> str | None:
        """The session's status from the state store, recording every done round seen; None if unreadable."""
        assert self._state is not None
        try:
            self.ledger.observe(self._state.list_rounds(session_id))
            session = self._state.get_session(session_id)
        except FednError:
            return None
        if session.status == SessionStatus.STOPPED:
            self.ledger.stopped_at.setdefault(session_id, session.rounds_done)
        return session.status

    # -- faults -------------------------------------------------------------

    def _inject(self, fault: Fault, session_id: str) -> bool:
        """Apply one fault and undo it; False when it could not land (a window the session never reached)."""
        fed = self._fed
        assert fed is not None and self._mongo is not None and self._s3 is not None and self._proxy is not None
        logger.info(
            "fault %s (target %d, down %.2fs) in session %s", fault.kind, fault.target, fault.down_s, session_id
        )
        if fault.kind == "window":
            return self._window(fault, session_id)
        if fault.kind == "stop":
            return self._stop(fault, session_id)
        self._note(
            session_id,
            fault.kind if fault.kind not in ("combiner", "client") else f"{fault.kind}-{fault.target}",
            fault.down_s,
        )
        if fault.kind == "reducer":
            _kill(fed.reducer)
            time.sleep(fault.down_s)
            self._restart_reducer()
        elif fault.kind == "combiner":
            _kill(fed.combiners[fault.target])
            time.sleep(fault.down_s)
            self.report.recovery_timeouts.extend(fed.restart_combiner(fault.target))
        elif fault.kind == "client":
            _kill(fed.clients[fault.target])
            time.sleep(fault.down_s)
            self.report.recovery_timeouts.extend(fed.restart_client(fault.target))
        elif fault.kind == "mongo":
            self._mongo.kill()
            time.sleep(fault.down_s)
            self._mongo.start()
        elif fault.kind == "s3":
            self._s3.kill()
            time.sleep(fault.down_s)
            self._s3.start()
        else:
            raise ValueError(f"unknown fault kind {fault.kind!r}")
        return True

    def _stop(self, fault: Fault, session_id: str) -> bool:
        """An admin stops the session; with ``target`` 1 the reducer is killed as soon as it acknowledged
        the stop, so the restarted one must not resume the session."""
        assert self._fed is not None
        try:
            with self._api() as api:
                api.stop_session(session_id)
        except FednError as exc:  # it ended meanwhile (409), or the reducer is away: not landed
            logger.info("stop of session %s did not land: %s", session_id, exc)
            return False
        self.ledger.stops.add(session_id)
        self._note(session_id, "stop" + (" then reducer" if fault.target else ""), fault.down_s)
        if fault.target:
            _kill(self._fed.reducer)
            time.sleep(fault.down_s)
            self._restart_reducer()
        return True

    def _window(self, fault: Fault, session_id: str) -> bool:
        assert self._fed is not None and self._proxy is not None
        proxy = self._proxy
        proxy.arm(fault.target, _WINDOW_COLLECTIONS)
        deadline = time.monotonic() + self.config.round_timeout_s + 10
        while time.monotonic() < deadline and not proxy.frozen:
            if self._observe(session_id) in _ENDED:
                break
            proxy.wait_frozen(0.3)
        if not proxy.frozen:
            proxy.disarm()
            return False
        held = proxy.held
        self._note(
            session_id,
            f"window k={fault.target} held {held.command if held else '?'} {held.collection if held else '?'}",
            fault.down_s,
        )
        _kill(self._fed.reducer)
        proxy.release()
        time.sleep(fault.down_s)
        self._restart_reducer()
        return True

    def _note(self, session_id: str, what: str, down_s: float) -> None:
        logger.info("fault in session %s: %s", session_id, what)
        self.report.faults_by_session.setdefault(session_id, []).append(what)
        self.ledger.landed(session_id, what, down_s)

    def _restart_reducer(self) -> None:
        assert self._fed is not None
        for _ in range(3):
            try:
                self._fed.restart_reducer(wait_timeout_s=30)
                return
            except FednError as exc:
                self.report.recovery_timeouts.append(f"reducer restart: {str(exc)[:300]}")
                _kill(self._fed.reducer)
        raise RuntimeError("the reducer did not come back after 3 restarts")

    # -- the end ------------------------------------------------------------

    def _finish(self) -> None:
        """Let the last sessions settle, stop the federation, collect garbage, then check every invariant."""
        assert self._fed is not None and self._state is not None and self._models is not None
        for session_id in self.ledger.sessions:
            self._observe(session_id)
        self._fed.stop()
        self._fed.kill_all()
        state, models = self._state, self._models
        assert self._s3 is not None
        list_blobs = self._s3.lister("chaos")
        partials_before_gc = list_blobs("partials/")
        gc_ran = self._collect_garbage(state, models)
        orphans = count_orphans(state, list_blobs)
        self.report.orphans = {
            "gc": "ran" if gc_ran else "absent (counts are a metric, not a violation)",
            "models": len(orphans.models),
            "partials": len(orphans.partials),
        }
        violations = check_all(
            state, models, self.ledger, partials_before_gc=partials_before_gc, orphans=orphans, gc_ran=gc_ran
        )
        if "window" in self.config.kinds and self._proxy is not None and not self._proxy.writes:
            self.report.errors.append("the proxy saw no write: window faults cannot have landed")
        self.report.violations = violations
        self.report.violations_by_invariant = Counter(v["invariant"] for v in violations)
        for session_id in self.ledger.sessions:
            with contextlib.suppress(FednError):
                session = state.get_session(session_id)
                if session.status == SessionStatus.DONE:
                    self.report.sessions_finished += 1
                elif session.status == SessionStatus.STOPPED:
                    self.report.sessions_stopped += 1
                elif session.status == SessionStatus.FAILED and (session.error or "").strip():
                    self.report.sessions_failed_with_reason += 1
                if session.status == SessionStatus.FAILED:
                    self.report.failure_reasons[session_id] = (session.error or "")[:300]

    @staticmethod
    def _collect_garbage(state: StateStore, models: ModelStore) -> bool:
        """One pass of the reducer's garbage collector with no grace (every process is stopped); False if
        the reducer has none."""
        try:
            from reducer.gc import GarbageCollector
        except ImportError:
            return False
        GarbageCollector(state, models, grace_s=0.0).collect()
        return True
