"""``fedn partition``: see what a partitioner does to a dataset before simulating with it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fedn.errors import InvalidArgument
from fedn.loading import load_object
from fedn.partition import PARTITIONERS, partition_labels

__all__ = ["label_counts", "plot_label_counts", "register"]


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "partition",
        help="show how a partitioner splits a dataset's labels over clients (table, JSON or PNG)",
        description=(
            "Split the labels returned by --labels (module:function returning a 1-D array) over N "
            "clients and report the label counts per client; --plot saves a stacked bar chart."
        ),
        epilog="example: fedn partition --labels examples.digits.data:train_labels --clients 20 "
        "--partition dirichlet --alpha 0.3 --plot labels.png",
    )
    p.add_argument("--labels", required=True, help="module:function returning the training labels")
    p.add_argument("--clients", type=int, required=True, help="number of partitions")
    p.add_argument("--partition", choices=PARTITIONERS, default="dirichlet", help="[default dirichlet]")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet alpha for dirichlet and quantity [default 0.5]")
    p.add_argument("--shards", type=int, default=2, help="label shards per client for shard [default 2]")
    p.add_argument("--seed", type=int, default=0, help="[default 0]")
    p.add_argument("--plot", default=None, metavar="PNG", help="save a bar chart of labels per client here")
    p.add_argument("--json", action="store_true", help="print the counts as JSON instead of a table")
    p.set_defaults(func=run_partition)


def label_counts(labels: np.ndarray, parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, counts)`` with ``counts[i, j]`` examples of class ``classes[j]`` at client ``i``."""
    classes, inverse = np.unique(labels, return_inverse=True)
    table = np.zeros((len(parts), len(classes)), dtype=np.int64)
    for i, idx in enumerate(parts):
        table[i] = np.bincount(inverse[idx], minlength=len(classes))
    return classes, table


def plot_label_counts(classes: np.ndarray, counts: np.ndarray, path: Path, title: str) -> None:
    """A stacked bar per client, one colour per label (matplotlib, no display needed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InvalidArgument("--plot needs matplotlib: pip install 'fedn[plot]'") from None
    n = counts.shape[0]
    fig, ax = plt.subplots(figsize=(max(6.0, min(0.25 * n, 30.0)), 4.0))
    bottom = np.zeros(n)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for j, c in enumerate(classes):
        ax.bar(np.arange(n), counts[:, j], bottom=bottom, width=0.9, label=str(c), color=cmap(j % cmap.N))
        bottom += counts[:, j]
    ax.set_xlabel("client")
    ax.set_ylabel("examples")
    ax.set_title(title)
    ax.legend(title="label", bbox_to_anchor=(1.01, 1), loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_partition(args: argparse.Namespace) -> int:
    source = load_object(args.labels)
    if not callable(source):
        raise InvalidArgument(f"{args.labels} is not a function")
    labels = np.asarray(source())
    if labels.ndim != 1 or len(labels) == 0:
        raise InvalidArgument(f"{args.labels} must return a non-empty 1-D array of labels, got shape {labels.shape}")
    try:
        parts = partition_labels(
            labels, args.clients, args.partition, alpha=args.alpha, shards=args.shards, seed=args.seed
        )
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    classes, counts = label_counts(labels, parts)
    if args.json:
        print(json.dumps({"labels": classes.tolist(), "counts": counts.tolist()}))
    else:
        width = max(4, max(len(str(c)) for c in classes) + 1)
        print("client " + "".join(f"{c!s:>{width}}" for c in classes) + "   total")
        for i, row in enumerate(counts):
            print(f"{i:>6} " + "".join(f"{v:>{width}}" for v in row) + f"{row.sum():>8}")
    if args.plot:
        title = f"{args.partition}" + (f" alpha={args.alpha}" if args.partition in ("dirichlet", "quantity") else "")
        plot_label_counts(classes, counts, Path(args.plot), f"{title}, {args.clients} clients, seed {args.seed}")
        print(f"plot saved to {args.plot}")
    return 0
