"""How fast ``fedn local`` starts: from the command to the end of round 1 (target ≤ 3 s on 2 cores).

Runs ``fedn local`` with a trivial client (``bench.workloads:SyntheticClient``, 1000 parameters: the
figure is the framework's start, not a model library's import) on 2 combiners and 4 clients, TLS and
tokens on as by default, one round without evaluation, ``--runs`` times. Each line of its output is
timestamped as it arrives, so the phases come from the command's own progress lines:

- ``cli``: interpreter start, imports, the seed model, up to the first line;
- ``combiners``: provisioning, the reducer and the combiners up and registered;
- ``clients``: the clients started, assigned and connected to their combiners;
- ``session``: the seed model uploaded and the session created;
- ``round1``: round 1 planned, downloaded, trained, uploaded, merged, and seen by the command;
- ``total`` is the sum (command to the end of round 1); ``exit`` is until every process stopped.

Each run is made with the fork server (the default: every process forked from one interpreter that
imported the tiers once, ``fedn.forkserver``) and with ``--no-fork-server`` (each process a new
interpreter), interleaved. Prints one JSON line per mode: the median of each phase over the runs, with min
and max of the total.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

__all__ = ["main", "run_once"]

# (phase, a fragment of the line that ends it), in the order the command prints them
_MILESTONES = (
    ("cli", "fedn local:"),
    ("combiners", "combiners online"),
    ("clients", "clients connected"),
    ("session", "session "),
    ("round1", "round   1/"),
)


def run_once(
    *, combiners: int = 2, clients: int = 4, timeout_s: float = 120.0, fork_server: bool = True
) -> dict[str, float]:
    """One ``fedn local`` run; seconds per phase, ``total`` and ``exit``. Raises if a milestone is missed."""
    argv = [
        *(sys.executable, "-m", "fedn", "local", "--client", "bench.workloads:SyntheticClient"),
        *("--client-arg", "params=1000", "--combiners", str(combiners), "--clients", str(clients)),
        *("--rounds", "1", "--no-eval"),
        *(() if fork_server else ("--no-fork-server",)),
    ]
    with tempfile.TemporaryDirectory(prefix="fedn-bench-startup-") as workdir:
        started = time.monotonic()
        proc = subprocess.Popen(
            [*argv, "--workdir", workdir], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        seen: dict[str, float] = {}
        lines: list[str] = []
        try:
            pending = list(_MILESTONES)
            assert proc.stdout is not None
            for line in proc.stdout:  # ends when the command exits
                lines.append(line)
                if pending and pending[0][1] in line:
                    seen[pending.pop(0)[0]] = time.monotonic() - started
            proc.wait(timeout_s)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        ended = time.monotonic() - started
    if proc.returncode != 0 or len(seen) != len(_MILESTONES):
        raise RuntimeError(f"fedn local exited {proc.returncode} with {sorted(seen)} seen:\n{''.join(lines[-30:])}")
    phases, previous = {}, 0.0
    for name, _ in _MILESTONES:
        phases[name] = seen[name] - previous
        previous = seen[name]
    return {**phases, "total": previous, "exit": ended}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--combiners", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args(argv)
    runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for i in range(args.runs):  # interleaved, so a machine that changes pace weighs on both alike
        for fork_server in (True, False) if i % 2 == 0 else (False, True):
            runs[fork_server].append(run_once(combiners=args.combiners, clients=args.clients, fork_server=fork_server))
    for fork_server in (True, False):
        done = runs[fork_server]
        row: dict[str, object] = {"bench": "startup", "fork_server": fork_server}
        row |= {"combiners": args.combiners, "clients": args.clients, "runs": args.runs}
        for name in done[0]:
            row[f"{name}_s"] = round(statistics.median(r[name] for r in done), 3)
        totals = [r["total"] for r in done]
        row |= {"total_min_s": round(min(totals), 3), "total_max_s": round(max(totals), 3), "target_s": 3.0}
        row["totals_s"] = [round(t, 3) for t in totals]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
