"""``make audit``: a found vulnerability always fails; an audit that could not run says so, never "clean"."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gate():
    spec = importlib.util.spec_from_file_location("fedn_ci_audit", ROOT / ".ci" / "audit.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


# pip-audit 2.x ``-f json``: what it wrote here, where PyPI's per-version JSON answers 404
SKIPPED = {"name": "waitress", "skip_reason": "Dependency not found on PyPI and could not be audited: waitress (3.0.2)"}
CLEAN = {"name": "flask", "version": "3.1.3", "vulns": []}
VULNERABLE = {
    "name": "waitress",
    "version": "3.0.0",
    "vulns": [{"id": "GHSA-9298-4cf8-g4wj", "fix_versions": ["3.0.1"], "aliases": ["CVE-2024-49769"]}],
}


@pytest.mark.parametrize("require", [False, True])
def test_a_vulnerability_fails_whether_or_not_the_rest_was_audited(gate, require: bool):
    verdict = gate.verdict_from_report({"dependencies": [VULNERABLE, SKIPPED, CLEAN], "fixes": []})
    assert verdict.exit_code(require) == 1
    assert "waitress 3.0.0: GHSA-9298-4cf8-g4wj (CVE-2024-49769); fixed in 3.0.1" in verdict.report()


def test_everything_skipped_is_not_audited_and_not_called_clean(gate):
    verdict = gate.verdict_from_report({"dependencies": [SKIPPED, SKIPPED], "fixes": []})
    assert "NOT AUDITED: 2 of 2" in verdict.report() and "no known vulnerabilities" not in verdict.report()
    assert verdict.exit_code(require=False) == 0 and verdict.exit_code(require=True) == 1


def test_all_looked_up_and_clean_passes(gate):
    verdict = gate.verdict_from_report({"dependencies": [CLEAN], "fixes": []})
    assert verdict.exit_code(require=True) == 0 and "1 packages audited" in verdict.report()


def test_an_unreachable_service_is_not_audited(gate):
    stderr = "Traceback ...\nrequests.exceptions.ConnectionError: Failed to resolve 'api.osv.dev'\n"
    verdict = gate.verdict_from_failure(stderr, packages=55)
    assert "NOT AUDITED: 55 of 55" in verdict.report() and "Failed to resolve" in verdict.report()
    assert verdict.exit_code(require=False) == 0 and verdict.exit_code(require=True) == 1


def test_the_lock_count_is_its_pins(gate):
    assert gate.pinned_packages(ROOT / "requirements" / "docker.lock") >= 40
