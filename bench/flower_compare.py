"""The simulator against Flower's, same workload, same machine, same run: prints the ratio.

Flower (``flwr[simulation]``, with Ray) is installed into its own venv (``.bench/flwr-venv`` unless
``FEDN_BENCH_FLOWER_VENV`` says otherwise) so it never touches fedn's environment; the workload is
``bench/flower_workload.py``: one 100k-parameter float32 tensor, the trivial train step of
``bench.workloads``, FedAvg over all 1000 clients every round. Our side runs the same through
``fedn.sim``. Steady seconds per round are the median after the first round on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench.sim import trivial

ROOT = Path(__file__).resolve().parent.parent
FLOWER = "flwr[simulation]==1.41.0"


def flower_python() -> Path:
    venv = Path(os.environ.get("FEDN_BENCH_FLOWER_VENV", ROOT / ".bench" / "flwr-venv"))
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = subprocess.run([str(python), "-c", "import flwr, ray"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", FLOWER], check=True)
    return python


def flower(clients: int, params: int, rounds: int) -> dict:
    proc = subprocess.run(
        [str(flower_python()), str(ROOT / "bench" / "flower_workload.py"), "--clients", str(clients),
         "--params", str(params), "--rounds", str(rounds), "--cpus", str(os.cpu_count() or 1)],
        capture_output=True, text=True, check=True, timeout=3600,
    )  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(clients: int = 1000, params: int = 100_000, rounds: int = 3) -> dict:
    theirs = flower(clients, params, rounds)
    ours = trivial(clients, params=params, rounds=rounds)
    flower_steady = statistics.median(theirs["s_per_round"][1:] or theirs["s_per_round"])
    return {
        "bench": "sim_vs_flower",
        "clients": clients,
        "params": params,
        "rounds": rounds,
        "flower": FLOWER,
        "flower_s_per_round": [round(t, 3) for t in theirs["s_per_round"]],
        "flower_s_per_round_steady": round(flower_steady, 3),
        "fedn_s_per_round": ours["s_per_round"],
        "fedn_s_per_round_steady": ours["s_per_round_steady"],
        "ratio_flower_over_fedn": round(flower_steady / ours["s_per_round_steady"], 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    print(json.dumps(compare(args.clients, args.params, args.rounds)), flush=True)


if __name__ == "__main__":
    main()
