"""``python -m bench.figures``: regenerate the pictures in docs/img/ and print the numbers behind them.

Everything is seeded and uses only data that ships with scikit-learn (digits), so a rerun on the same
versions draws the same curves. Three groups, one per ``--only`` name:

- ``partition``: ``fedn partition --plot`` on the digits labels, 20 clients, Dirichlet alpha 0.1 and
  0.5 and iid (seed 7), into ``docs/img/partition-*.png``.
- ``strategies``: the simulator runs of ``tests/e2e/test_convergence.py`` (digits, 50 clients,
  Dirichlet(0.3), 2 combiner groups, seed 7, 30 rounds), one per strategy, into
  ``docs/img/strategies-accuracy.png``.
- ``async``: ``bench.sim``'s async-against-sync workload (100 clients, half 10x slower, modelled clock,
  the same 1500 client updates), accuracy against modelled time, into ``docs/img/async-vs-sync.png``.

Each run prints one JSON line with its accuracy curve: the curves in the pictures are these numbers.
The architecture diagram (``docs/img/architecture.svg``) is hand-written SVG, not generated here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["GROUPS", "STRATEGIES", "main"]

IMG = Path(__file__).resolve().parents[1] / "docs" / "img"

# (label, strategy, strategy_config): the three of docs/strategies.md's convergence table first
STRATEGIES = [
    ("fedavg", "fedavg", {}),
    ("fedprox mu=0.01", "fedprox", {"mu": 0.01}),
    ("fedadam eta=0.03", "fedadam", {"eta": 0.03}),
    ("fedyogi eta=0.03", "fedyogi", {"eta": 0.03}),
    ("fedadagrad eta=0.03", "fedadagrad", {"eta": 0.03}),
    ("fedavgm eta=0.5 momentum=0.5", "fedavgm", {"eta": 0.5, "momentum": 0.5}),
]
PARTITIONS = [("0.1", "dirichlet", "0.1"), ("0.5", "dirichlet", "0.5"), ("iid", "iid", "0.5")]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    # no software version or date in the file: the same numbers give the same bytes
    fig.savefig(path, dpi=100, metadata={"Software": None})
    print(json.dumps({"saved": str(path)}), flush=True)


def partition_figures(out: Path) -> None:
    """Run ``fedn partition --plot`` itself (in this process) for each partitioner."""
    from fedn.cli import main as fedn_main

    for name, partition, alpha in PARTITIONS:
        argv = ["partition", "--labels", "examples.digits.data:train_labels", "--clients", "20"]
        argv += ["--partition", partition, "--alpha", alpha, "--seed", "7", "--json"]
        argv += ["--plot", str(out / f"partition-{name}.png")]
        print(json.dumps({"command": "fedn " + " ".join(argv)}), flush=True)
        if fedn_main(argv) != 0:
            raise SystemExit(f"fedn {' '.join(argv)} failed")


def strategy_curves(workers: int) -> list[dict]:
    from fedn.sim import Simulation, parse_spec

    rows = []
    for label, strategy, config in STRATEGIES:
        spec = parse_spec(
            client="examples.digits:DigitsClient",
            clients=50,
            combiners=2,
            rounds=30,
            partition="dirichlet",
            alpha=0.3,
            seed=7,
            workers=workers,
            strategy=strategy,
            strategy_config=config,
        )
        result = Simulation(spec).run()
        row = {"figure": "strategies", "label": label, "strategy": strategy, "strategy_config": config}
        row["accuracy"] = [round(r["accuracy"], 4) for r in result.rounds]
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def strategy_figure(rows: list[dict], out: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for i, row in enumerate(rows):
        curve = row["accuracy"]
        style = "--" if i % 2 else "-"  # fedprox lies on fedavg and fedyogi near fedadam: keep both visible
        ax.plot(range(1, len(curve) + 1), curve, style, marker=".", label=row["label"])
    ax.axhline(0.85, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (global model)")
    ax.set_ylim(0.0, 1.0)
    ax.set_title("digits, 50 clients, Dirichlet(0.3), 2 combiner groups, seed 7")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    _save(fig, out / "strategies-accuracy.png")
    plt.close(fig)


def async_curves(workers: int, clients: int = 100, sync_rounds: int = 15, buffer_size: int = 10) -> list[dict]:
    """``bench.sim.async_vs_sync``'s two runs, keeping each version's accuracy and modelled time."""
    from fedn.sim import Simulation, parse_spec

    common = dict(
        client="examples.digits:DigitsClient",
        clients=clients,
        combiners=2,
        partition="dirichlet",
        alpha=1.0,
        seed=7,
        workers=workers,
        config={"epochs": 2},
        heterogeneity={"slow_share": 0.5, "slowdown": 10.0, "task_time_s": 1.0},
    )
    specs = {
        "sync": parse_spec(**common, rounds=sync_rounds),
        f"async K={buffer_size}": parse_spec(
            **common,
            rounds=max(1, sync_rounds * clients // buffer_size),
            mode="async",
            buffer_size=buffer_size,
            strategy="fedavgm",
            strategy_config={"eta": 0.5, "momentum": 0.0},
        ),
    }
    rows = []
    for label, spec in specs.items():
        result = Simulation(spec).run()
        elapsed, times = 0.0, []
        for r in result.rounds:
            elapsed += r["modelled_s"]
            times.append(round(elapsed, 2))
        row = {"figure": "async", "label": label, "modelled_s": times}
        row["updates"] = sum(r["updates"] for r in result.rounds)
        row["accuracy"] = [round(r["accuracy"], 4) for r in result.rounds]
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def async_figure(rows: list[dict], out: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for row in rows:
        ax.plot(row["modelled_s"], row["accuracy"], marker=".", label=f"{row['label']} ({row['updates']} updates)")
    ax.set_xlabel("modelled time (s)")
    ax.set_ylabel("test accuracy (global model)")
    ax.set_ylim(0.0, 1.0)
    ax.set_title("digits, 100 clients, half 10x slower, same client work")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    _save(fig, out / "async-vs-sync.png")
    plt.close(fig)


GROUPS = ("partition", "strategies", "async")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.figures", description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=GROUPS, action="append", help="one group (repeatable) [default all]")
    parser.add_argument("--out", type=Path, default=IMG, help="[default docs/img]")
    parser.add_argument("--workers", type=int, default=2, help="simulator worker processes [default 2]")
    args = parser.parse_args(argv)
    groups = args.only or list(GROUPS)
    args.out.mkdir(parents=True, exist_ok=True)
    if "partition" in groups:
        partition_figures(args.out)
    if "strategies" in groups:
        strategy_figure(strategy_curves(args.workers), args.out)
    if "async" in groups:
        async_figure(async_curves(args.workers), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
