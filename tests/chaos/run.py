"""``python -m tests.chaos.run --faults N --seed S [--mode sync|async|both]``: one chaos run, one JSON line.

The line holds the counts (faults injected, sessions, how they ended) and every invariant violation
with its details; the exit code is 1 when there is a violation, 0 otherwise. Process logs stay in the
printed ``workdir`` when a run finds violations (or with ``--keep``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tests.chaos.harness import ALL_KINDS, ChaosConfig, ChaosRun

_MODES = {"sync": ("sync",), "async": ("async",), "both": ("sync", "async")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", type=int, default=20, help="faults to inject (default 20)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault schedule (default 1)")
    parser.add_argument("--mode", choices=sorted(_MODES), default="both", help="session modes, alternating")
    parser.add_argument(
        "--kinds", default=",".join(ALL_KINDS), help=f"comma-separated fault kinds (default {','.join(ALL_KINDS)})"
    )
    parser.add_argument("--faults-per-session", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="keep stores and logs here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    parser.add_argument("--verbose", action="store_true", help="log the harness's steps to stderr")
    args = parser.parse_args(argv)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    unknown = sorted(set(kinds) - set(ALL_KINDS))
    if unknown or not kinds:
        parser.error(f"unknown fault kinds {unknown}; choose from {', '.join(ALL_KINDS)}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    config = ChaosConfig(
        faults=args.faults,
        seed=args.seed,
        modes=_MODES[args.mode],
        kinds=kinds,
        faults_per_session=args.faults_per_session,
        workdir=args.workdir,
        keep_workdir=args.keep,
    )
    report = ChaosRun(config).run()
    print(json.dumps(report.as_dict()), flush=True)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
