"""Audit a hashed lock file with pip-audit, and say plainly when the audit could not be done.

pip-audit alone is not honest on a restricted network: when its vulnerability service answers 404
for every package (PyPI's per-version JSON is not served everywhere) it skips them all and still
prints "No known vulnerabilities found" with exit 0; when the service is unreachable it exits 1 as
if it had found something. This wrapper tells the three outcomes apart:

- a known vulnerability in any pinned package: listed, exit 1, always;
- every package looked up, none vulnerable: exit 0;
- some packages not looked up (service unreachable, or 404): a loud NOT AUDITED notice naming how
  many and why; exit 0, or exit 1 when ``--require`` (or ``FEDN_AUDIT_REQUIRED=1``) says an
  unaudited lock must fail the build, as it should where the service is reachable.

Usage: ``python .ci/audit.py requirements/docker.lock [--require]`` (``make lint`` runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

TIMEOUT_S = 300


@dataclass(frozen=True)
class Verdict:
    """What one audit established; ``exit_code`` applies the --require policy."""

    vulnerable: list[str]
    audited: int
    not_audited: int
    reason: str

    def exit_code(self, require: bool) -> int:
        if self.vulnerable:
            return 1
        return 1 if require and self.not_audited else 0

    def report(self) -> str:
        lines = [f"pip-audit: VULNERABLE: {v}" for v in self.vulnerable]
        if self.not_audited:
            lines.append(
                f"pip-audit: NOT AUDITED: {self.not_audited} of {self.audited + self.not_audited} packages could "
                f"not be looked up ({self.reason}); no vulnerability was found, none was ruled out either"
            )
        if not self.vulnerable and not self.not_audited:
            lines.append(f"pip-audit: {self.audited} packages audited, no known vulnerabilities")
        return "\n".join(lines)


def verdict_from_report(report: dict) -> Verdict:
    """A verdict from pip-audit's ``-f json`` output."""
    vulnerable, audited, skipped, reasons = [], 0, 0, []
    for dep in report.get("dependencies", []):
        if "skip_reason" in dep:
            skipped += 1
            reasons.append(str(dep["skip_reason"]))
            continue
        audited += 1
        for vuln in dep.get("vulns", []):
            fixes = ", ".join(vuln.get("fix_versions", [])) or "no fixed release"
            aliases = ", ".join(vuln.get("aliases", []))
            vulnerable.append(
                f"{dep['name']} {dep.get('version', '?')}: {vuln['id']}"
                + (f" ({aliases})" if aliases else "")
                + f"; fixed in {fixes}"
            )
    reason = reasons[0] if reasons else ""
    return Verdict(vulnerable, audited, skipped, reason)


def verdict_from_failure(stderr: str, packages: int) -> Verdict:
    """pip-audit wrote no report: it could not reach its service (or failed otherwise)."""
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "no output")
    return Verdict([], 0, packages, f"pip-audit failed: {last[:300]}")


def pinned_packages(lock: Path) -> int:
    """How many ``name==version`` pins the lock holds."""
    return sum(1 for line in lock.read_text().splitlines() if "==" in line and not line.startswith((" ", "#")))


def audit(lock: Path) -> Verdict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audit.json"
        argv = [sys.executable, "-m", "pip_audit", "-r", str(lock), "--disable-pip", "--no-deps"]
        argv += ["--progress-spinner", "off", "-f", "json", "-o", str(out)]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return Verdict([], 0, pinned_packages(lock), f"pip-audit took over {TIMEOUT_S}s")
        if out.exists() and out.stat().st_size:
            return verdict_from_report(json.loads(out.read_text()))
        return verdict_from_failure(done.stderr, pinned_packages(lock))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock", type=Path, help="a lock file with hashes (pip-compile / uv pip compile)")
    parser.add_argument(
        "--require",
        action="store_true",
        default=os.environ.get("FEDN_AUDIT_REQUIRED") == "1",
        help="fail when any package could not be audited [env FEDN_AUDIT_REQUIRED=1]",
    )
    args = parser.parse_args(argv)
    verdict = audit(args.lock)
    print(verdict.report(), file=sys.stderr if verdict.vulnerable or verdict.not_audited else sys.stdout)
    return verdict.exit_code(args.require)


if __name__ == "__main__":
    sys.exit(main())
