"""The docs' shell blocks run, command by command, against a real federation (scheme: tests/doc_blocks.py).

One federation of processes on 127.0.0.1 (a reducer, a combiner, two digits clients, TLS and tokens) serves
every block of README.md and docs/*.md that is not marked ``<!-- not run: why -->``. The blocks of one file
run in document order, in one working directory, so files and ids made by one command serve the next.
Each command must exit 0. What the test changes before it runs a command, and why:

- The reducer: ``--reducer URL`` and an exported ``FEDN_REDUCER`` name the test's federation, and the
  CLI's credentials (``FEDN_CA_FILE``, ``FEDN_TOKEN_FILE``, a client's ``--ca-file``/``--token-file``/
  ``FEDN_CLIENT_TOKEN_FILE``) are the federation's: the docs' own files are signed by the docs' own CA.
- Placeholders: ``MODEL_ID`` is the model the file's last ``fedn model upload`` printed (one is uploaded if
  none was), ``SESSION_ID`` the session it last started and left running (one is started if none was),
  ``TOKEN_ID`` the token its last ``fedn token create`` printed. A user's own client class
  (``mypackage...:MyClient``, ``mymodule:MyClient``) is examples.digits' class, without its ``--client-arg``.
- Sizes: ``fedn session start`` runs 1 round; ``fedn simulate`` at most 4 clients, 2 combiners, 2 rounds
  on 1 worker; ``fedn bench load`` 8 clients, 1 combiner, 1 round, 1000 parameters.
- ``fedn local`` runs as its session (its session flags, 1 round, ``--wait``) on the shared federation:
  one more federation per command would cost half a minute each, and tests/e2e/test_demo.py runs
  ``fedn local`` itself.
- ``fedn client start`` starts a client process, waits until the reducer lists it online, and stops it.
  ``fedn reducer start`` starts on 127.0.0.1 and a free port (for ``--host``/``--port`` and any elided
  ``...``), must answer its health check, and is stopped. A combiner needs a reducer and credentials
  of its own: its blocks are marked not run (tests/e2e start combiners through fedn/launcher.py).
- A simulation or a client start the docs show twice (the same flags in any order, up to the paths of
  credential files) runs once.
- A session a block starts without ``--wait`` and does not stop is stopped after the block, so that the
  next block finds the federation idle.
- ``--flower`` commands need the ``flwr`` package: when it is not installed the rest of their block runs,
  and the block is reported skipped.

Shell plumbing runs as the shell would: ``export``, ``mkdir``, ``umask``, ``cd``; a ``>`` or ``>>`` sends a
command's output to that file; ``python -m``/``python -c`` run as processes. Any other command, and any
``$VAR``/``$(...)`` expansion, fails the test: mark its block ``<!-- not run: why -->``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pytest

from fedn.api_client import ReducerAPI
from fedn.auth.tokens import Role
from fedn.cli import main
from fedn.errors import FednError
from fedn.launcher import FederationSpec, LocalFederation, free_port
from tests.doc_blocks import ROOT, Block, Command, all_blocks, command_class, fedn_argv, shell_commands
from tests.federations import serving

DIGITS = "examples.digits:DigitsClient"
SHELL_BLOCKS = [b for b in all_blocks() if b.is_shell and b.not_run is None]
_USER_CLASS = re.compile(r"^(?:mypackage|mymodule)(?:\.\w+)*:MyClient$")
_CREDENTIALS = ("FEDN_REDUCER", "FEDN_CA_FILE", "FEDN_TOKEN_FILE", "FEDN_TOKEN")
_COMMAND_TIMEOUT_S = 180.0
_EXPANSION = re.compile(r"\$[\w({]|`")  # $VAR, ${VAR}, $(command), `command`
# flags of `fedn local` that shape its processes, not its session
_LOCAL_ONLY = {"--client", "--flower", "--client-arg", "--combiners", "--clients", "--min-accuracy", "--workdir"}
_LOCAL_ONLY_SWITCHES = {"--insecure", "--central-eval", "--no-eval"}


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    spec = FederationSpec(client=DIGITS, num_combiners=1, num_clients=2, workdir=tmp_path_factory.mktemp("doc-fed"))
    with serving(spec) as fed:
        yield fed


@dataclass
class DocShell:
    """What the blocks of one doc file share: a working directory, exported variables and the ids printed."""

    cwd: Path
    fed: LocalFederation
    exported: dict[str, str] = field(default_factory=dict)
    model_id: str | None = None
    token_id: str | None = None
    open_sessions: list[str] = field(default_factory=list)
    umask: int | None = None
    not_here: list[str] = field(default_factory=list)  # commands of this block that need a missing package

    def credentials(self) -> dict[str, str]:
        secrets = self.fed.secrets
        assert secrets is not None
        return {
            "FEDN_REDUCER": self.fed.reducer_url,
            "FEDN_CA_FILE": str(secrets.ca_file),
            "FEDN_TOKEN_FILE": str(secrets.token_file(Role.ADMIN, "doc-admin")),
        }

    def environment(self, command: Command) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _CREDENTIALS}
        env.update(self.exported)
        env.update(command.env)
        env.update(self.credentials())
        return env

    def client_token(self, block: Block) -> Path:
        """A client token of the federation, one subject (so one client id) per block."""
        assert self.fed.secrets is not None
        return self.fed.secrets.token_file(Role.CLIENT, client_name(block))


def client_name(block: Block) -> str:
    return f"doc-{block.path.stem}-{block.line}"


_SHELLS: dict[Path, DocShell] = {}
_RAN: set[tuple[str, ...]] = set()


def _first_time(kind: str, args: list[str]) -> bool:
    """False for a simulation or a client start the docs already showed (the same flags and values in any
    order, up to the credentials' paths): each costs seconds, and the same command twice tests nothing new."""
    key = (kind, *sorted(_flag_values(args)))
    if key in _RAN:
        return False
    _RAN.add(key)
    return True


def _flag_values(args: list[str]) -> list[str]:
    """``--flag value`` pairs and lone words, with the paths of credential files left out."""
    out, k = [], 0
    while k < len(args):
        takes_value = args[k].startswith("--") and k + 1 < len(args) and not args[k + 1].startswith("--")
        if takes_value:
            value = "FILE" if args[k] in ("--ca-file", "--token-file") else args[k + 1]
            out.append(f"{args[k]} {value}")
            k += 2
        else:
            out.append(args[k])
            k += 1
    return out


def _shell_for(block: Block, fed: LocalFederation, tmp_path_factory) -> DocShell:
    shell = _SHELLS.get(block.path)
    if shell is None or shell.fed is not fed:
        shell = _SHELLS[block.path] = DocShell(tmp_path_factory.mktemp(block.path.stem), fed)
    return shell


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=lambda b: b.where)
def test_shell_block_runs(block: Block, federation: LocalFederation, tmp_path_factory):
    shell = _shell_for(block, federation, tmp_path_factory)
    shell.not_here.clear()
    try:
        for command in shell_commands(block):
            _run(block, shell, command)
    finally:
        for session_id in shell.open_sessions:
            _fedn(block, shell, Command({}, ["fedn", "session", "stop", session_id, "--wait"]), check=False)
        shell.open_sessions.clear()
    if shell.not_here:
        pytest.skip(f"{block.where}: the rest ran; not run here: {'; '.join(shell.not_here)}")


def _run(block: Block, shell: DocShell, command: Command) -> None:
    expanded = [a for a in [*command.argv, *command.env.values()] if _EXPANSION.search(a)]
    assert not expanded, f"{block.where}: this test does not expand {expanded}: mark the block not run"
    kind = command_class(command.argv)
    if kind == "plumbing":
        _plumbing(block, shell, command)
    elif kind == "fedn":
        _run_fedn(block, shell, command)
    elif kind in ("python-m", "python-c"):
        _subprocess(block, shell, command, [sys.executable, *command.argv[1:]])
    else:
        pytest.fail(
            f"{block.where}: `{' '.join(command.argv)}` cannot run in this test; "
            "put <!-- not run: why --> before the block"
        )


def _plumbing(block: Block, shell: DocShell, command: Command) -> None:
    head, args = Path(command.argv[0]).name, command.argv[1:]
    if head == "export":
        for assignment in args:
            name, _, value = assignment.partition("=")
            shell.exported[name] = value
    elif head == "mkdir":
        mode = int(args[args.index("-m") + 1], 8) if "-m" in args else 0o777
        for path in (a for i, a in enumerate(args) if not a.startswith("-") and (i == 0 or args[i - 1] != "-m")):
            (shell.cwd / path).mkdir(mode=mode, parents=True, exist_ok=True)
    elif head == "umask":
        shell.umask = int(args[0], 8)
    elif head == "cd":
        shell.cwd = (shell.cwd / args[0]).resolve()
    else:
        pytest.fail(f"{block.where}: `{' '.join(command.argv)}`: this test runs no `{head}`; mark the block not run")


# -- fedn commands -----------------------------------------------------------------------------------


def _run_fedn(block: Block, shell: DocShell, command: Command) -> None:
    args = _substituted(block, shell, fedn_argv(command.argv))
    words = _command_words(args)
    if "--flower" in args and importlib.util.find_spec("flwr") is None:
        command_name = " ".join(w for w in words if not w.startswith("-"))
        shell.not_here.append(f"`fedn {command_name} --flower ...` needs the flwr package")
        return
    if words[:2] == ["client", "start"]:
        _client_starts(block, shell, command, args)
        return
    if words[:2] == ["reducer", "start"]:
        _reducer_starts(block, shell, command, args)
        return
    if words[:2] == ["combiner", "start"]:
        pytest.fail(f"{block.where}: a combiner needs a reducer and credentials of its own: mark the block not run")
    if words[:1] == ["local"]:
        args = _local_as_session(args)
    elif words[:1] == ["simulate"]:
        args = _small_simulation(args)
        if not _first_time("simulate", args):
            return
    elif words[:2] == ["bench", "load"]:
        args = _replaced(args, {"--clients": "8", "--combiners": "1", "--rounds": "1", "--params": "1000"})
    elif words[:2] == ["session", "start"]:
        args = _replaced(args, {"--rounds": "1"})
    out = _fedn(block, shell, Command(command.env, ["fedn", *args], command.stdout_to, command.append))
    _remember_ids(shell, args, out)


def _command_words(args: list[str]) -> list[str]:
    """The command and subcommand, after the global options (``fedn --log-format json reducer start``)."""
    k = 0
    while k < len(args) and args[k].startswith("-"):
        k += 1 if "=" in args[k] else 2
    return args[k : k + 2]


def _substituted(block: Block, shell: DocShell, args: list[str]) -> list[str]:
    out: list[str] = []
    drop_client_args = False
    for i, arg in enumerate(args):
        flag = args[i - 1] if i else ""
        if flag == "--reducer":
            arg = shell.fed.reducer_url
        elif flag == "--ca-file" and _command_words(args) == ["client", "start"]:
            arg = shell.credentials()["FEDN_CA_FILE"]
        elif flag == "--token-file" and _command_words(args) == ["client", "start"]:
            arg = str(shell.client_token(block))
        elif _USER_CLASS.match(arg):
            arg, drop_client_args = DIGITS, True
        elif "MODEL_ID" in arg:
            arg = arg.replace("MODEL_ID", _model_id(block, shell))
        elif "SESSION_ID" in arg:
            arg = arg.replace("SESSION_ID", _session_id(block, shell))
        elif "TOKEN_ID" in arg:
            assert shell.token_id, f"{block.where}: TOKEN_ID before any `fedn token create` in this file"
            arg = arg.replace("TOKEN_ID", shell.token_id)
        out.append(arg)
    return _without(out, {"--client-arg"}, set()) if drop_client_args else out


def _model_id(block: Block, shell: DocShell) -> str:
    if shell.model_id is None:
        _run_fedn(block, shell, Command({}, ["fedn", "model", "upload", "--client", DIGITS]))
    assert shell.model_id is not None
    return shell.model_id


def _session_id(block: Block, shell: DocShell) -> str:
    if not shell.open_sessions:  # the doc stops a session it assumes is running: start one to stop
        start = ["fedn", "session", "start", "--rounds", "1000", "--model", _model_id(block, shell)]
        started = re.search(r"session (\S+) started", _fedn(block, shell, Command({}, start)))
        assert started, f"{block.where}: `fedn session start` printed no session id"
        shell.open_sessions.append(started.group(1))
    return shell.open_sessions.pop()


def _remember_ids(shell: DocShell, args: list[str], out: str) -> None:
    if m := re.search(r"uploaded model (\S+)", out):
        shell.model_id = m.group(1)
    if m := re.search(r"token (\S+) \(", out):
        shell.token_id = m.group(1)
    if (
        _command_words(args) == ["session", "start"]
        and "--wait" not in args
        and (m := re.search(r"session (\S+) started", out))
    ):
        shell.open_sessions.append(m.group(1))


def _fedn(block: Block, shell: DocShell, command: Command, *, check: bool = True) -> str:
    """Run ``fedn ARGS`` in this process (an interpreter per command would cost seconds): exit 0 or fail."""
    args = command.argv[1:]
    stdout, stderr = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    cwd = os.getcwd()
    try:
        os.chdir(shell.cwd)
        with (
            mock.patch.dict(os.environ, shell.environment(command), clear=True),
            contextlib.redirect_stdout(stdout),
            contextlib.redirect_stderr(stderr),
        ):
            code = main(args)
    except Exception as exc:  # the CLI turns every expected error into one line and exit 2; this is a crash
        pytest.fail(f"{block.where}: `fedn {' '.join(args)}` crashed with {exc!r}:\n{traceback.format_exc()[-3000:]}")
    finally:
        os.chdir(cwd)
        root.handlers[:] = handlers
        root.setLevel(level)
    out = stdout.getvalue() + stderr.getvalue()
    if check:
        assert code == 0, f"{block.where}: `fedn {' '.join(args)}` exited {code}:\n{out[-3000:]}"
    if command.stdout_to:
        with open(shell.cwd / command.stdout_to, "a" if command.append else "w") as f:
            f.write(stdout.getvalue())
    return out


def _replaced(args: list[str], values: dict[str, str]) -> list[str]:
    return [values.get(args[i - 1], a) if i else a for i, a in enumerate(args)]


def _without(args: list[str], flags: set[str], switches: set[str]) -> list[str]:
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in flags:
            skip = True
        elif arg not in switches:
            out.append(arg)
    return out


def _local_as_session(args: list[str]) -> list[str]:
    session = _without(args[1:], _LOCAL_ONLY, _LOCAL_ONLY_SWITCHES)
    return ["session", "start", *_replaced(["x", *session], {"--rounds": "1"})[1:], "--wait"]


def _small_simulation(args: list[str]) -> list[str]:
    def at_most(flag: str, limit: int) -> dict[str, str]:
        return {flag: str(min(int(args[args.index(flag) + 1]), limit))} if flag in args else {}

    sizes = {**at_most("--clients", 4), **at_most("--combiners", 2), **at_most("--rounds", 2), "--workers": "1"}
    sizes.update(at_most("--buffer-size", 2))
    args = _replaced(args, sizes)
    return args if "--workers" in args else [*args, "--workers", "1"]


# -- processes -------------------------------------------------------------------------------------


def _subprocess(block: Block, shell: DocShell, command: Command, argv: list[str]) -> None:
    result = subprocess.run(
        argv,
        cwd=shell.cwd,
        env=shell.environment(command),
        capture_output=True,
        text=True,
        timeout=_COMMAND_TIMEOUT_S,
        umask=-1 if shell.umask is None else shell.umask,
    )
    assert result.returncode == 0, (
        f"{block.where}: `{' '.join(command.argv)}` exited {result.returncode}:\n{result.stderr[-3000:]}"
    )
    if command.stdout_to:
        with open(shell.cwd / command.stdout_to, "a" if command.append else "w") as f:
            f.write(result.stdout)


def _client_starts(block: Block, shell: DocShell, command: Command, args: list[str]) -> None:
    """A client is a service: it must come up (the reducer lists it online), then it is stopped."""
    env = {**shell.environment(command), "FEDN_CLIENT_TOKEN_FILE": str(shell.client_token(block))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    if "--ca-file" not in args:
        args = [*args, "--ca-file", env["FEDN_CA_FILE"]]
    if not _first_time("client", args):
        return
    with shell.fed.api() as api:
        _service_comes_up(block, shell, args, env, "online at the reducer", lambda: _online(api, client_name(block)))


def _reducer_starts(block: Block, shell: DocShell, command: Command, args: list[str]) -> None:
    """A reducer is a service: it starts with the doc's flags on 127.0.0.1 and a free port, must answer
    its health check, and is stopped; with ``--log-format json`` every line it logs must be JSON."""
    if "--tls-cert" in args:
        pytest.fail(f"{block.where}: a reducer with TLS is checked for its certificate's host: mark the block not run")
    port = free_port()
    args = [a for i, a in enumerate(args) if a not in _ADDRESS and (i == 0 or args[i - 1] not in _ADDRESS)]
    args += ["--host", "127.0.0.1", "--port", str(port)]

    def answers() -> bool:
        with contextlib.suppress(FednError), ReducerAPI(f"http://127.0.0.1:{port}", timeout_s=5.0) as api:
            return api.health() is not None
        return False

    log = _service_comes_up(block, shell, args, shell.environment(command), "answering", answers)
    if "--log-format" in args and args[args.index("--log-format") + 1] == "json":
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        assert lines, f"{block.where}: the reducer logged nothing"
        for line in lines:
            assert line.startswith("{") and isinstance(json.loads(line), dict), (
                f"{block.where}: a log line is not a JSON object: {line}"
            )


_ADDRESS = ("--host", "--port")


def _service_comes_up(
    block: Block, shell: DocShell, args: list[str], env: dict[str, str], what: str, ready: Callable[[], bool]
) -> Path:
    """Start ``fedn ARGS``, wait until ``ready()``, stop it; its log file. Fails if it exits or never is."""
    log = shell.cwd / f"{_command_words(args)[0]}-{block.path.stem}-{block.line}.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "fedn", *args], cwd=shell.cwd, env=env, stdout=sink, stderr=sink)
    try:
        deadline = time.monotonic() + _COMMAND_TIMEOUT_S
        while not ready():
            assert proc.poll() is None, f"{block.where}: `fedn {' '.join(args)}` exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{block.where}: never {what}:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return log


def _online(api: ReducerAPI, client_id: str) -> bool:
    return any(c.id == client_id and c.status == "online" for c in api.list_clients())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("fedn session start --rounds 2 --aggregator no_such_rule", "exited 2"),
        ("mc admin user add local b secret", "cannot run in this test"),
        ('fedn model download MODEL_ID -o "$HOME/m.safetensors"', "does not expand"),
        ("fedn combiner start --name c --port 12080", "mark the block not run"),
        ("fedn reducer start --tls-cert r.pem --tls-key r.key", "mark the block not run"),
    ],
)
def test_a_wrong_or_unrunnable_command_fails_its_block(body, message, federation, tmp_path_factory):
    block = Block(ROOT / "docs" / "not-a-doc.md", 1, "sh", body, None)
    with pytest.raises((pytest.fail.Exception, AssertionError), match=message):
        test_shell_block_runs(block, federation, tmp_path_factory)


def test_the_substitutions_shrink_sizes_and_keep_every_other_flag():
    local = ["local", "--client", DIGITS, "--client-arg", "seed=7", "--rounds", "8", "--strategy", "fedadam"]
    session = ["session", "start", "--rounds", "1", "--strategy", "fedadam", "--wait"]
    assert _local_as_session([*local, "--insecure", "--min-accuracy", "0.9"]) == session
    simulate = ["simulate", "--client", DIGITS, "--clients", "1000", "--rounds", "3", "--alpha", "0.3"]
    small = ["simulate", "--client", DIGITS, "--clients", "4", "--rounds", "2", "--alpha", "0.3", "--workers", "1"]
    assert _small_simulation(simulate) == small
    assert _small_simulation(["simulate", "--clients", "3", "--workers", "auto"])[-3:] == ["3", "--workers", "1"]
    assert _command_words(["--log-format", "json", "reducer", "start", "--port", "1"]) == ["reducer", "start"]
    assert sorted(_flag_values(["client", "start", "--ca-file", "a.pem", "--client", "m:C"])) == sorted(
        _flag_values(["client", "start", "--client", "m:C", "--ca-file", "other/ca.pem"])
    )
