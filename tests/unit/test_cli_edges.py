"""The CLI's rough edges of issue 16: each user error is one line and exit 2, and the output is stable."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import sys
import types
from pathlib import Path

import pytest

from combiner.settings import CombinerSettings
from fedn.cli import build_parser, main
from fedn.cli import local as local_cli
from fedn.cli import models as models_cli
from fedn.cli import sessions as sessions_cli
from fedn.config import settings_from_args
from fedn.errors import InvalidArgument
from fedn.loading import load_object
from fedn.records import MetricSummary, ModelRecord, Round, RoundStatus, Session

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(autouse=True)
def _restore_logging():
    """`main` points the root logger at this test's captured stderr; put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if not re.match(r"^\d\d:\d\d:\d\d ", line)]  # log lines aside
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# -- user code from the working directory ------------------------------------------------------------


def test_a_client_module_in_the_working_directory_wins_as_in_the_children(tmp_path, monkeypatch):
    # arrange: the same module name elsewhere on sys.path (an installed package, say) and in the cwd
    elsewhere, here = tmp_path / "site", tmp_path / "work"
    elsewhere.mkdir(), here.mkdir()
    (elsewhere / "edgeclient_mod.py").write_text("OTHER = 1\n")
    (here / "edgeclient_mod.py").write_text("class Bad:\n    pass\n")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())] + [str(elsewhere)])
    monkeypatch.chdir(here)
    monkeypatch.delitem(sys.modules, "edgeclient_mod", raising=False)
    # act
    cls = load_object("edgeclient_mod:Bad")
    # assert: the children get the cwd first on PYTHONPATH; the parent's check now resolves the same file
    assert cls.__name__ == "Bad" and sys.path[0] == str(here)
    sys.modules.pop("edgeclient_mod", None)


def _client_module(tmp_path: Path, monkeypatch, body: str) -> str:
    name = f"edge_{abs(hash(body)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_an_error_in_a_clients_constructor_is_one_line(tmp_path, monkeypatch, capsys):
    mod = _client_module(
        tmp_path, monkeypatch, "class Boom:\n    def __init__(self, **kw):\n        raise OSError('data missing')\n"
    )
    code, _, err = _run(capsys, "client", "start", "--client", f"{mod}:Boom", "--reducer", "http://127.0.0.1:9")
    assert code == 2
    assert _one_error_line(err) == f"error: cannot create {mod}:Boom: OSError: data missing"


def test_fedn_local_refuses_a_bad_option_before_any_process_starts(tmp_path, monkeypatch, capsys):
    mod = _client_module(tmp_path, monkeypatch, "class Ok:\n    pass\n")
    started = []
    monkeypatch.setattr(local_cli, "LocalFederation", lambda *a, **k: started.append(a))
    for option, value in (("--fraction", "2"), ("--fraction", "0"), ("--round-timeout", "-1"), ("--seed", "-3")):
        code, _, err = _run(capsys, "local", "--client", f"{mod}:Ok", option, value)
        assert code == 2, (option, value)
        assert option in _one_error_line(err)
    assert started == []


def test_an_unknown_log_level_lists_the_valid_ones(capsys):
    code, _, err = _run(capsys, "--log-level", "verbose", "session", "list")
    assert code == 2
    line = _one_error_line(err)
    assert "verbose" in line and "DEBUG, INFO, WARNING, ERROR" in line


def test_a_usage_error_is_one_line(capsys):
    code, _, err = _run(capsys, "session", "start", "--rounds", "many")
    assert code == 2
    assert "--rounds" in _one_error_line(err)


def test_a_missing_upload_file_is_one_line(tmp_path, capsys):
    code, _, err = _run(capsys, "model", "upload", "--file", str(tmp_path / "nope.safetensors"))
    assert code == 2
    assert "nope.safetensors" in _one_error_line(err)


def test_version(capsys):
    code, out, _ = _run(capsys, "--version")
    assert code == 0 and re.match(r"^fedn \S+$", out.strip())


def test_the_reducer_url_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("FEDN_REDUCER", "https://reducer.example:8092")
    for argv in (["session", "list"], ["model", "show", "m"], ["token", "list"], ["audit", "list"]):
        assert build_parser().parse_args(argv).reducer == "https://reducer.example:8092", argv
    assert "FEDN_REDUCER" in build_parser().format_help()


# -- a closed pipe ----------------------------------------------------------------------------------


class _FakeAPI:
    def __init__(self, *, session: Session | None = None, rounds: list[Round] = (), models=()) -> None:
        self.session, self.rounds, self.models = session, list(rounds), list(models)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def list_models(self, **kwargs):
        return self.models

    def get_model(self, model_id):
        return self.models[0]

    def get_session(self, session_id):
        return self.session

    def list_rounds(self, session_id):
        return self.rounds


def _model(i: int) -> ModelRecord:
    return ModelRecord(id=f"m{i}", key=f"models/m{i}", sha256="0" * 64, size_bytes=10, num_parameters=2)


def test_a_closed_pipe_exits_quietly(monkeypatch, capsys):
    api = _FakeAPI(models=[_model(i) for i in range(20_000)])
    monkeypatch.setattr(models_cli, "reducer_api", lambda args: api)
    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # `| head -1` has read its line and gone
    saved = os.dup(1)
    stdout = os.fdopen(write_fd, "w")
    monkeypatch.setattr(sys, "stdout", stdout)
    try:
        code = main(["model", "list"])
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    assert code == 141
    assert "Traceback" not in capsys.readouterr().err


# -- sizes and help ---------------------------------------------------------------------------------


def test_sizes_parse_and_print_with_units():
    from fedn.config import format_size, parse_size

    assert [parse_size(t) for t in ("64MiB", "1GiB", "512KB", "1024", "1.5KiB")] == [
        64 << 20,
        1 << 30,
        512_000,
        1024,
        1536,
    ]
    assert format_size(1 << 30) == "1GiB" and format_size(1000) == "1000"
    with pytest.raises(InvalidArgument, match="is not a size"):
        parse_size("12XB")


def test_byte_settings_take_units_from_flags_and_environment(monkeypatch):
    monkeypatch.setenv("FEDN_COMBINER_MAX_STAGED_BYTES", "64MiB")
    parser = argparse.ArgumentParser()
    from fedn.config import add_settings_arguments

    add_settings_arguments(parser, CombinerSettings, "FEDN_COMBINER_")
    settings = settings_from_args(CombinerSettings, parser.parse_args(["--max-update-bytes", "512KB"]))
    assert settings.max_update_bytes == 512_000 and settings.max_staged_bytes == 64 << 20


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize(
    "argv", [("reducer", "start"), ("combiner", "start"), ("client", "start"), ("local",), ("simulate",)]
)
def test_service_help_reads_well(argv, capsys):
    text = " ".join(_help(capsys, *argv).split())
    assert "PydanticUndefined" not in text
    assert not re.search(r"_BYTES; default \d{5,}", text), "sizes print with a unit (1GiB), not as a byte count"


def test_sizes_in_help_have_units(capsys):
    assert "default 1GiB" in " ".join(_help(capsys, "reducer", "start").split())


def test_model_help_says_where_a_session_starts(capsys):
    text = " ".join(_help(capsys, "session", "start").split())
    assert "newest uploaded model" not in text and "previous session's output" in text


# -- one round line, --json on show commands ---------------------------------------------------------


def _round(index: int = 2, **extra) -> Round:
    return Round(
        id=f"r{index}",
        session_id="s1",
        index=index,
        status=RoundStatus.DONE,
        model_in="m1",
        model_out="m2",
        combiners=["c0", "c1"],
        num_selected=4,
        num_updates=4,
        duration_s=0.5,
        metrics={"train_loss": MetricSummary(mean=0.25, min=0.1, max=0.4, count=4)},
        **extra,
    )


def test_format_round_shows_training_then_evaluation_metrics():
    from fedn.cli.rounds import format_round  # new in issue 16

    r = _round()
    evaluation = types.SimpleNamespace(
        metrics={
            "loss": MetricSummary(mean=0.5, min=0.4, max=0.6, count=4),
            "accuracy": MetricSummary(mean=0.9, min=0.8, max=1.0, count=4),
        }
    )
    object.__setattr__(r, "evaluation", evaluation)  # works before and after Round grows the field
    line = format_round(r, 6, {"accuracy": 0.875})
    assert line == (
        "round   2/6 | combiners 2 | clients 4/4 | train_loss 0.2500 | eval_accuracy 0.9000 | eval_loss 0.5000"
        " | accuracy 0.8750 |  0.50 s"
    )


def test_local_and_wait_print_the_same_plain_line():
    from fedn.cli.rounds import RoundReporter, format_round  # new in issue 16

    out = io.StringIO()
    with RoundReporter(6, stream=out) as report:  # not a terminal: plain lines only
        report.round(_round())
    assert out.getvalue() == format_round(_round(), 6) + "\n"
    assert not hasattr(local_cli, "_round_line")  # fedn local has no formatter of its own


def test_on_a_terminal_the_round_lines_scroll_above_a_progress_bar():
    from fedn.cli.rounds import RoundReporter, format_round  # new in issue 16

    out = io.StringIO()
    with RoundReporter(6, stream=out, force_terminal=True) as report:
        report.round(_round())
    assert format_round(_round(), 6) in out.getvalue()
    assert "rounds" in out.getvalue()


def test_session_show_json_is_one_document(monkeypatch, capsys):
    session = Session(id="s1", rounds=6, seed_model_id="m0", model_id="m2")
    monkeypatch.setattr(sessions_cli, "reducer_api", lambda args: _FakeAPI(session=session, rounds=[_round()]))
    code, out, _ = _run(capsys, "session", "show", "s1", "--json")
    document = json.loads(out)
    assert code == 0 and document["id"] == "s1" and document["rounds"][0]["index"] == 2


def test_model_show_json_is_one_document(monkeypatch, capsys):
    monkeypatch.setattr(models_cli, "reducer_api", lambda args: _FakeAPI(models=[_model(7)]))
    code, out, _ = _run(capsys, "model", "show", "m7", "--json")
    assert code == 0 and json.loads(out)["id"] == "m7"


def test_certs_show_json_is_one_document(tmp_path, capsys):
    from fedn.tls import create_ca

    cert, _ = create_ca(tmp_path, common_name="edge CA", days=1)
    code, out, _ = _run(capsys, "certs", "show", str(cert), "--json")
    assert code == 0 and "edge CA" in json.loads(out)["subject"]


# -- the README's client ----------------------------------------------------------------------------


def test_the_readme_client_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    code = next(b for b in blocks if "class MyClient" in b)
    module = types.ModuleType("mymodule")
    exec(compile(code, "README.md", "exec"), module.__dict__)
    client = module.MyClient(partition=0, num_partitions=20)  # a tiny slice: 90 digits
    params, num_examples, metrics = client.train(client.initial_parameters(), {"epochs": 1})
    _loss, num_eval, eval_metrics = client.evaluate(params, {})
    assert num_examples == num_eval > 0 and metrics["train_loss"] > 0 and 0 <= eval_metrics["accuracy"] <= 1


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--clients", "100000000000", "100000000000 clients is more than the 512 processes"),
        ("--clients", "513", "513 clients is more than the 512 processes"),
        ("--combiners", "65", "65 combiners is more than the 64 processes"),
        ("--clients", "0", "0 must be at least 1"),
    ],
)
def test_fedn_local_refuses_more_processes_than_one_machine_runs(flag, value, message, capsys) -> None:
    # before this bound, --clients 100000000000 started client processes until the machine gave out
    assert main(["local", "--client", "bench.workloads:SyntheticClient", flag, value]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
