"""A whole federation on one machine: reducer, combiners and clients as separate OS processes.

Used by ``fedn local`` (and so ``make demo``) and by the end-to-end tests. Every
process it starts is owned here and stopped by :meth:`LocalFederation.stop`.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedn.api_client import ReducerAPI
from fedn.auth.tokens import Role
from fedn.errors import FednError, Unavailable
from fedn.forkserver import ForkServer
from fedn.processes import ManagedProcess, free_port
from fedn.provision import LocalSecrets, provision
from fedn.tls import TLSFiles

__all__ = ["FederationSpec", "LocalFederation", "ManagedProcess", "free_port"]

logger = logging.getLogger(__name__)


@dataclass
class FederationSpec:
    """What to run: a client class and how many of each tier."""

    client: str  # module:Class
    client_args: list[str] = field(default_factory=list)
    num_combiners: int = 2
    num_clients: int = 4
    workdir: Path | None = None  # None: a temporary directory, removed at stop
    state_url: str | None = None  # None: SQLite in the work directory
    models_url: str | None = None  # None: a directory in the work directory
    host: str = "127.0.0.1"
    log_level: str = "INFO"
    combiner_heartbeat_s: float = 1.0
    combiner_timeout_s: float = 6.0
    client_heartbeat_timeout_s: float = 5.0
    secure: bool = True  # TLS and tokens, from a throw-away CA and key in the work directory
    combiner_metrics: bool = True  # each combiner serves /metrics on a free port (see combiner_metrics_urls)
    # Fork the processes from one interpreter that imported their modules once (fedn.forkserver): a
    # start costs a fork, not an interpreter's imports (the e2e tests' federations start in about 2/3 of
    # the time). Processes placed with a command prefix, and non-fedn commands, start as new interpreters.
    prefork: bool = True
    # Where each process runs, by name ("reducer", "combiner-0", "client-3"): a command prefix (e.g.
    # ["ip", "netns", "exec", "host-b"]) and the address it binds. Default: this host, ``host``.
    placement: Callable[[str], tuple[list[str], str]] | None = None

    def place(self, name: str) -> tuple[list[str], str]:
        return self.placement(name) if self.placement else ([], self.host)


class LocalFederation:
    """Starts and stops a federation of processes; use as a context manager."""

    def __init__(self, spec: FederationSpec, *, on_event: Callable[[str], None] | None = None) -> None:
        self.spec = spec
        self._on_event = on_event or (lambda message: logger.info("%s", message))
        self._workdir: Path | None = None
        self._owns_workdir = False
        self.reducer: ManagedProcess | None = None
        self.combiners: list[ManagedProcess] = []
        self.clients: list[ManagedProcess] = []
        self.reducer_url = ""
        self.secrets: LocalSecrets | None = None
        self.combiner_metrics_urls: dict[str, str] = {}  # combiner name -> its /metrics URL
        self.forkserver: ForkServer | None = None
        self._ports: set[int] = set()  # handed out to this federation's processes

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> LocalFederation:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise RuntimeError("federation not started")
        return self._workdir

    @property
    def processes(self) -> list[ManagedProcess]:
        return [p for p in (self.reducer, *self.combiners, *self.clients) if p is not None]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("OMP_NUM_THREADS", "1")  # many small processes share the cores
        # The user's client module must import in every child as it does here.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH", "")]))
        return env

    def _reducer_env(self) -> dict[str, str]:
        # Store URLs may hold passwords: the environment keeps them out of `ps`.
        return {**self._env(), "FEDN_REDUCER_STATE": self.state_url, "FEDN_REDUCER_MODELS": self.models_url}

    def _fedn(self, name: str, *args: str) -> list[str]:
        prefix, _ = self.spec.place(name)
        return [*prefix, sys.executable, "-m", "fedn", "--log-level", self.spec.log_level, *args]

    def start(self, *, wait_timeout_s: float = 120.0) -> None:
        """Start the reducer and the combiners and wait until they are up. Clients start separately.

        The combiners start with the reducer, not after it answers: interpreters' start and imports are
        most of the wait, and overlap on the cores; a combiner registers as soon as the reducer answers.
        """
        spec = self.spec
        if spec.workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="fedn-local-"))
            self._owns_workdir = True
        else:
            self._workdir = Path(spec.workdir).resolve()
            self._workdir.mkdir(parents=True, exist_ok=True)
        try:
            if spec.prefork:
                self.forkserver = ForkServer(self._preload(), self._env())
            if spec.secure:
                self.secrets = provision(self.workdir / "secrets", {"reducer": [spec.place("reducer")[1]]})
            self._spawn_reducer()
            for i in range(spec.num_combiners):
                self.start_combiner(i)
            self._wait_for_reducer(wait_timeout_s)
            self.wait_for_combiners(spec.num_combiners, timeout_s=wait_timeout_s)
        except BaseException:
            self.stop()
            raise

    def _preload(self) -> list[str]:
        """What the federation's processes import: the tiers, and the user's client module."""
        tiers = ["fedn.api_client", "reducer.cli", "reducer.server", "combiner.cli", "combiner.server"]
        return [*tiers, "client.cli", "client.runtime", self.spec.client.partition(":")[0]]

    def _free_port(self) -> int:
        """A free port not yet handed to another process of this federation. The processes start
        together, so one may not have bound its port when the next asks the OS for a free one; and
        gRPC binds with SO_REUSEPORT, so two could share it silently."""
        for _ in range(100):
            port = free_port()
            if port not in self._ports:
                self._ports.add(port)
                return port
        raise RuntimeError("no free port that this federation has not handed out already")

    def _process(self, name: str, argv: list[str], log_path: Path) -> ManagedProcess:
        return ManagedProcess(name, argv, log_path, forkserver=self.forkserver)

    @property
    def models_url(self) -> str:
        return self.spec.models_url or (self.workdir / "models").as_uri()

    @property
    def state_url(self) -> str:
        return self.spec.state_url or f"sqlite:///{self.workdir / 'state.db'}"  # sqlite:////abs/state.db

    def start_reducer(self, *, wait_timeout_s: float = 60.0) -> None:
        self._spawn_reducer()
        self._wait_for_reducer(wait_timeout_s)

    def _spawn_reducer(self) -> None:
        _, host = self.spec.place("reducer")
        port = self._free_port()
        self.reducer_url = f"{'https' if self.secrets else 'http'}://{host}:{port}"
        self.reducer = self._process(
            "reducer",
            self._fedn(
                "reducer",
                "reducer",
                "start",
                "--host",
                host,
                "--port",
                str(port),
                "--combiner-timeout-s",
                str(self.spec.combiner_timeout_s),
                *self._security_args("reducer", host),
            ),
            self.workdir / "logs" / "reducer.log",
        )
        self.reducer.start(self._reducer_env())
        self._on_event(f"reducer   pid {self.reducer.pid:<7} {self.reducer_url}")

    def _wait_for_reducer(self, timeout_s: float) -> None:
        self._wait(lambda api: api.health() is not None, "the reducer to answer", self.reducer, timeout_s)

    def restart_reducer(self, *, wait_timeout_s: float = 60.0) -> None:
        """Start the reducer again with the same port and stores (after it died or was killed)."""
        if self.reducer is None:
            raise RuntimeError("the reducer was never started")
        self.reducer.stop()
        self.reducer = self._process("reducer", self.reducer.argv, self.reducer.log_path)
        self.reducer.start(self._reducer_env())
        self._on_event(f"reducer   pid {self.reducer.pid:<7} restarted at {self.reducer_url}")
        self._wait_for_reducer(wait_timeout_s)

    def start_combiner(self, index: int) -> ManagedProcess:
        name = f"combiner-{index}"
        _, host = self.spec.place(name)
        port = self._free_port()
        metrics_args: list[str] = []
        if self.spec.combiner_metrics:
            metrics_port = self._free_port()
            metrics_args = ["--metrics-port", str(metrics_port)]
            scheme = "https" if self.secrets else "http"
            self.combiner_metrics_urls[name] = f"{scheme}://{host}:{metrics_port}/metrics"
        proc = self._process(
            name,
            self._fedn(
                name,
                "combiner",
                "start",
                "--name",
                name,
                "--host",
                host,
                "--port",
                str(port),
                "--reducer",
                self.reducer_url,
                "--heartbeat-interval-s",
                str(self.spec.combiner_heartbeat_s),
                *metrics_args,
                *self._security_args(name, host),
            ),
            self.workdir / "logs" / f"{name}.log",
        )
        proc.start(self.combiner_env(name))
        self.combiners.append(proc)
        metrics = f"  metrics {self.combiner_metrics_urls[name]}" if name in self.combiner_metrics_urls else ""
        self._on_event(f"{name} pid {proc.pid:<7} {host}:{port}{metrics}")
        return proc

    def start_client(self, index: int, extra_args: Sequence[str] = ()) -> ManagedProcess:
        name = f"client-{index}"
        argv = self._fedn(
            name,
            "client",
            "start",
            "--reducer",
            self.reducer_url,
            "--client",
            self.spec.client,
            "--name",
            name,
            "--heartbeat-timeout-s",
            str(self.spec.client_heartbeat_timeout_s),
            "--client-arg",
            f"partition={index}",
            "--client-arg",
            f"num_partitions={self.spec.num_clients}",
            *self._security_args(name, ""),
        )
        for arg in [*self.spec.client_args, *extra_args]:
            argv += ["--client-arg", arg]
        return self._start_client_process(name, argv)

    def start_client_process(self, name: str, python_args: Sequence[str]) -> ManagedProcess:
        """Start ``python *python_args`` as a process of clients (a load generator, say): it is placed,
        logged and stopped like the clients are."""
        prefix, _ = self.spec.place(name)
        return self._start_client_process(name, [*prefix, sys.executable, *python_args])

    def _start_client_process(self, name: str, argv: list[str]) -> ManagedProcess:
        proc = self._process(name, argv, self.workdir / "logs" / f"{name}.log")
        proc.start(self.client_env(name))
        self.clients.append(proc)
        return proc

    def start_clients(self, *, wait_timeout_s: float = 180.0) -> None:
        for i in range(self.spec.num_clients):
            self.start_client(i)
        self._on_event(f"{self.spec.num_clients} clients started (pids {', '.join(str(c.pid) for c in self.clients)})")
        self.wait_for_clients(self.spec.num_clients, timeout_s=wait_timeout_s)

    def stop(self) -> dict[str, int | None]:
        """Stop clients, then combiners, then the reducer; returns each exit code by name."""
        codes: dict[str, int | None] = {}
        for group in (self.clients, self.combiners, [self.reducer] if self.reducer else []):
            for proc in group:
                proc.signal(signal.SIGTERM)
            for proc in group:
                codes[proc.name] = proc.stop()
        if self.forkserver is not None:
            self.forkserver.close()
            self.forkserver = None
        if self._owns_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
        return codes

    # -- waiting -----------------------------------------------------------

    def api(self) -> ReducerAPI:
        """A client of the reducer with an admin token (and the CA) when the federation is secure."""
        token = self.secrets.token(Role.ADMIN, "admin") if self.secrets else None
        return ReducerAPI(self.reducer_url, timeout_s=10.0, token=token, tls=self.api_tls())

    def api_tls(self) -> TLSFiles | None:
        return TLSFiles(ca_file=str(self.secrets.ca_file)) if self.secrets else None

    # -- security ----------------------------------------------------------

    def _security_args(self, name: str, host: str) -> list[str]:
        """The flags of ``name``: its certificate (servers), the CA, and the token keys; no secrets."""
        sec = self.secrets
        if sec is None:
            return []
        args = ["--ca-file", str(sec.ca_file)]
        if name.startswith("client"):
            return args
        cert, key = sec.ensure_certificate(name, [host])
        args += ["--tls-cert", str(cert), "--tls-key", str(key)]
        if name == "reducer":
            return [*args, "--token-signing-key", str(sec.signing_key)]
        return [*args, "--token-public-key", str(sec.public_key)]

    def combiner_env(self, name: str) -> dict[str, str]:
        """The environment combiner ``name`` is started (and restarted) with: its token and the models."""
        return {**self._env(), **self._token_env(Role.COMBINER, name), "FEDN_COMBINER_MODELS": self.models_url}

    def client_env(self, name: str) -> dict[str, str]:
        return {**self._env(), **self._token_env(Role.CLIENT, name)}

    def _token_env(self, role: Role, name: str) -> dict[str, str]:
        """The token of a combiner or client process, as a file named in its environment."""
        if self.secrets is None:
            return {}
        prefix = "FEDN_COMBINER" if role == Role.COMBINER else "FEDN_CLIENT"
        return {f"{prefix}_TOKEN_FILE": str(self.secrets.token_file(role, name))}

    def _wait(
        self, ready: Callable[[ReducerAPI], bool], what: str, proc: ManagedProcess | None, timeout_s: float
    ) -> None:
        """Ask ``ready`` on one connection (a TLS handshake per question cost as much as the wait), after
        a back-off from 10 ms to 200 ms: what is ready soon is seen soon, what is not costs little."""
        deadline = time.monotonic() + timeout_s
        delay_s = 0.01
        with self.api() as api:
            while time.monotonic() < deadline:
                if proc is not None and not proc.is_running():
                    raise Unavailable(f"{proc.name} exited while waiting for {what}; its log:\n{proc.log_tail()}")
                try:
                    if ready(api):
                        return
                except FednError:
                    pass
                time.sleep(delay_s)
                delay_s = min(0.2, delay_s * 1.5)
        tail = f"; {proc.name}'s log:\n{proc.log_tail()}" if proc else ""
        raise Unavailable(f"timed out after {timeout_s:.0f}s waiting for {what}{tail}")

    def online_combiners(self) -> int:
        with self.api() as api:
            return int(api.health()["combiners_online"])

    def online_clients(self) -> int:
        with self.api() as api:
            return int(api.health()["clients_online"])

    def wait_for_combiners(self, count: int, *, timeout_s: float = 60.0) -> None:
        self._wait(lambda api: _online(api, "combiners") >= count, f"{count} combiners to register", None, timeout_s)
        self._on_event(f"{count} combiners online")

    def wait_for_clients(self, count: int, *, timeout_s: float = 120.0) -> None:
        self._wait(lambda api: _online(api, "clients") >= count, f"{count} clients to connect", None, timeout_s)
        self._on_event(f"{count} clients connected")


def _online(api: ReducerAPI, what: str) -> int:
    return int(api.health()[f"{what}_online"])
