"""``module:Name`` references fail alike in the CLI and the simulator: both go through fedn.loading."""

from __future__ import annotations

import pytest

import fedn.sim.worker
from fedn.cli import main
from fedn.errors import InvalidArgument
from fedn.loading import load_object
from fedn.sim import Simulation, parse_spec

BAD = [
    ("no_colon_here", "'no_colon_here' is not of the form module:Class"),
    ("fedn_no_such_module:Client", "cannot import 'fedn_no_such_module': No module named 'fedn_no_such_module'"),
    ("fedn.loading:NoSuchClient", "module 'fedn.loading' has no attribute 'NoSuchClient'"),
    (
        ".relative:Client",
        "cannot import '.relative': TypeError: the 'package' argument is required to perform a relative import "
        "for '.relative'",
    ),
]


def test_load_object_resolves_module_colon_name() -> None:
    assert load_object("fedn.loading:load_object") is load_object


@pytest.mark.parametrize(("ref", "message"), BAD)
def test_a_bad_reference_gives_the_same_error_in_the_cli_and_the_simulator(
    ref: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(InvalidArgument) as direct:
        load_object(ref)
    with pytest.raises(InvalidArgument) as simulated:
        Simulation(parse_spec(client=ref, clients=2, rounds=1))
    assert direct.value.message == simulated.value.message == message

    commands = [
        ["simulate", "--client", ref, "--clients", "2", "--rounds", "1", "--workers", "1", "--no-progress"],
        ["model", "upload", "--client", ref],
        ["partition", "--labels", ref, "--clients", "2"],
    ]
    for argv in commands:
        assert main(argv) == 2, argv
        assert capsys.readouterr().err == f"error: {message}\n", argv


def test_simulation_workers_load_client_classes_the_same_way() -> None:
    # a worker process resolves spec.client itself; it must not have a loader of its own
    assert fedn.sim.worker.load_object is load_object


@pytest.mark.parametrize("body", ["1 / 0", "def broken(:", "undefined_name"])
def test_a_module_that_fails_as_it_is_imported_is_a_clear_error(body: str, tmp_path, monkeypatch) -> None:
    (tmp_path / "fedn_failing_user_mod.py").write_text(body + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        InvalidArgument, match=r"cannot import 'fedn_failing_user_mod': (ZeroDivision|Syntax|Name)Error"
    ):
        load_object("fedn_failing_user_mod:Client")
    assert main(["simulate", "--client", "fedn_failing_user_mod:Client", "--clients", "2", "--rounds", "1"]) == 2
