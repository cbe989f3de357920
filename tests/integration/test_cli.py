"""The `fedn` commands against a real reducer, and their one-line errors (exit 2, no traceback)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from fedn.cli import main
from fedn.codec import decode_model, encode_model
from fedn.launcher import free_port
from reducer.server import ReducerServer
from reducer.settings import ReducerSettings


@pytest.fixture(autouse=True)
def _restore_logging():
    """`main` points the root logger at this test's captured stderr; put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def reducer_url(tmp_path: Path):
    server = ReducerServer(
        ReducerSettings(
            host="127.0.0.1", port=0, state=f"sqlite:///{tmp_path / 's.db'}", models=(tmp_path / "models").as_uri()
        )
    )
    server.start()
    yield server.url
    server.stop()


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_model_and_session_commands(reducer_url, tmp_path, capsys):
    seed = tmp_path / "seed.safetensors"
    seed.write_bytes(encode_model({"w": np.arange(6, dtype=np.float32)}))
    code, out, _ = _run(capsys, "model", "upload", "--file", str(seed), "--reducer", reducer_url)
    assert code == 0 and "6 parameters" in out
    model_id = out.split()[2]
    code, out, _ = _run(
        capsys,
        "model",
        "upload",
        "--client",
        "examples.digits:DigitsClient",
        "--client-arg",
        "seed=3",
        "--reducer",
        reducer_url,
    )
    assert code == 0 and "4810 parameters" in out
    code, out, _ = _run(capsys, "model", "list", "--reducer", reducer_url)
    assert code == 0 and model_id in out and len(out.strip().splitlines()) == 2
    target = tmp_path / "back.safetensors"
    code, _, _ = _run(capsys, "model", "download", model_id, "-o", str(target), "--reducer", reducer_url)
    assert code == 0 and np.array_equal(decode_model(target.read_bytes())["w"], np.arange(6, dtype=np.float32))

    # No combiner: the session's first round waits its timeout for clients, then fails with the reason.
    code, out, _ = _run(
        capsys,
        "session",
        "start",
        "--rounds",
        "1",
        "--round-timeout",
        "0.5",
        "--model",
        model_id,
        "--config",
        '{"epochs": 1}',
        "--wait",
        "--reducer",
        reducer_url,
    )
    assert code == 1
    assert "failed" in out and "only 0 clients connected" in out
    session_id = out.split()[1]
    code, out, _ = _run(capsys, "session", "show", session_id, "--reducer", reducer_url)
    assert code == 0 and '"epochs": 1' in out
    code, out, _ = _run(capsys, "session", "list", "--reducer", reducer_url)
    assert code == 0 and session_id in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["session", "start", "--config", "{bad"], "not valid JSON"),
        (["session", "start", "--rounds", "0"], "rounds"),
        (["model", "download", "nope"], "not found"),
        (["client", "start", "--client", "no_such_module:Client"], "cannot import"),
        (["client", "start", "--client", "examples.digits:Nope"], "no attribute"),
        (["reducer", "start", "--state", "postgres://u:p@h/db"], "unsupported state store"),
        (["combiner", "start", "--port", "-5"], "port"),
    ],
)
def test_errors_are_one_line(reducer_url, capsys, argv, message):
    if argv[0] in ("session", "model"):
        argv = [*argv, "--reducer", reducer_url]
    code, _, err = _run(capsys, *argv)
    assert code == 2
    # the in-process reducer logs to stderr too: find the CLI's own line
    assert any(line.startswith("error: ") and message in line for line in err.splitlines()), err
    assert "Traceback" not in err


def test_reducer_with_an_unreachable_mongo_exits_with_one_redacted_line(capsys):
    code, _, err = _run(
        capsys, "reducer", "start", "--port", "0", "--state", f"mongodb://fedn:hunter2@127.0.0.1:{free_port()}/fedn"
    )
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "fedn:***@127.0.0.1" in lines[0]
    assert "hunter2" not in err and "Traceback" not in err


def test_unreachable_reducer_is_a_clear_error(capsys):
    code, _, err = _run(capsys, "model", "list", "--reducer", f"http://127.0.0.1:{free_port()}")
    assert code == 2 and "unreachable" in err


def test_session_stop_and_evaluate_commands(reducer_url, tmp_path, capsys):
    seed = tmp_path / "seed.safetensors"
    seed.write_bytes(encode_model({"w": np.arange(6, dtype=np.float32)}))
    code, out, _ = _run(capsys, "model", "upload", "--file", str(seed), "--reducer", reducer_url)
    model_id = out.split()[2]
    # no client ever connects here: a queued session is cancelled at once, with who stopped it
    code, out, _ = _run(capsys, "session", "start", "--rounds", "2", "--model", model_id, "--reducer", reducer_url)
    session_id = out.split()[1]
    code, out, _ = _run(capsys, "session", "evaluate", "--model", model_id, "--reducer", reducer_url)
    assert code == 0 and f"evaluating model {model_id}" in out
    evaluation_id = out.split()[1].rstrip(":")
    for sid in (evaluation_id, session_id):
        code, out, _ = _run(capsys, "session", "stop", sid, "--reducer", reducer_url)
        assert code == 0 and f"session {sid}" in out and ("stopped" in out or "stopping" in out)
        code, out, _ = _run(capsys, "session", "show", sid, "--json", "--reducer", reducer_url)
        shown = json.loads(out)
        assert shown["stop_requested_by"] is not None
    code, out, _ = _run(capsys, "session", "show", evaluation_id, "--json", "--reducer", reducer_url)
    assert json.loads(out)["mode"] == "evaluate"
    # an ended session cannot be stopped: one line, exit 2
    stopped = [
        sid
        for sid in (evaluation_id, session_id)
        if json.loads(_run(capsys, "session", "show", sid, "--json", "--reducer", reducer_url)[1])["status"]
        == "stopped"
    ]
    if stopped:
        code, out, err = _run(capsys, "session", "stop", stopped[0], "--reducer", reducer_url)
        assert code == 2 and "error: " in err and "only a pending or running session" in err
    # a bad model id is refused before anything is stored
    code, _, err = _run(capsys, "session", "evaluate", "--model", "../x", "--reducer", reducer_url)
    assert code == 2 and "Traceback" not in err
