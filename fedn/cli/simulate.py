"""``fedn simulate``: thousands of clients on one machine, the same client class a deployment runs."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fedn.cli.models import parse_client_args
from fedn.cli.sessions import add_mode_arguments, mode_params, non_negative_int, parse_json_object
from fedn.errors import InvalidArgument
from fedn.loading import flower_client
from fedn.partition import PARTITIONERS

__all__ = ["register"]


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "simulate",
        help="simulate a federation of many clients on this machine's cores",
        description=(
            "Run N clients of a client class (the one `fedn client start` runs, unchanged) in worker "
            "processes, grouped under simulated combiners and merged by the real aggregation code. "
            "Writes per-round metrics (metrics.json, metrics.csv) and the final model (model.safetensors). "
            "Each client gets partition=I num_partitions=N, and with --partition also partitioner and alpha."
        ),
        epilog=(
            "example: fedn simulate --client examples.digits:DigitsClient --clients 1000 --combiners 4 "
            "--rounds 20 --partition dirichlet --alpha 0.3 --fraction 0.1 --seed 7 --workers auto"
        ),
    )
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--client", help="the client class, module:Class")
    who.add_argument("--flower", metavar="MODULE:CLIENT_FN", help="a Flower client_fn, run unchanged (docs/flower.md)")
    p.add_argument("--client-arg", action="append", default=[], metavar="KEY=VALUE", help="argument for every client")
    p.add_argument("--clients", type=int, required=True, help="number of simulated clients")
    p.add_argument("--combiners", type=int, default=1, help="simulated combiner groups [default 1]")
    p.add_argument("--rounds", type=int, default=10, help="training rounds [default 10]")
    p.add_argument("--partition", choices=PARTITIONERS, default=None, help="how the client splits its data")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet alpha for dirichlet and quantity [default 0.5]")
    p.add_argument("--fraction", type=float, default=1.0, help="share of clients sampled per round [default 1.0]")
    p.add_argument("--min-clients", type=int, default=1, help="updates a round needs to count [default 1]")
    p.add_argument("--seed", type=int, default=0, help="sampling, profiles and client seeds [default 0]")
    p.add_argument("--workers", default="auto", help="worker processes, or auto for one per core [default auto]")
    p.add_argument("--config", default="{}", help="JSON object passed to every train call")
    p.add_argument("--strategy", default="fedavg", help="server optimizer [default fedavg]")
    p.add_argument("--strategy-config", default="{}", help="JSON object of the strategy's parameters")
    p.add_argument("--aggregator", default="fedavg", help="rule in each combiner group [default fedavg]")
    p.add_argument("--aggregator-config", default="{}", help="JSON object of the aggregator's parameters")
    add_mode_arguments(p)
    p.add_argument(
        "--compression",
        default="none",
        metavar="CODEC",
        help="update compression, as a session's option: none, float16, int8[:block=256,stochastic=true], "
        "topk[:ratio=0.01,error_feedback=true,momentum=0] (docs/compression.md) [default none]",
    )
    p.add_argument(
        "--downlink-compression",
        default="none",
        metavar="CODEC",
        help="global model compression: none, float16 or int8[:block=256] [default none]",
    )
    het = p.add_argument_group("heterogeneity (modelled time, reproducible)")
    het.add_argument("--dropout", type=float, default=0.0, help="chance a flaky client misses a round [default 0]")
    het.add_argument("--dropout-share", type=float, default=1.0, help="share of clients that are flaky [default 1]")
    het.add_argument("--slow-share", type=float, default=0.0, help="share of clients that are slow [default 0]")
    het.add_argument("--slowdown", type=float, default=10.0, help="how much slower a slow client is [default 10]")
    het.add_argument(
        "--example-time", type=float, default=1e-3, help="modelled seconds per example and epoch [default 0.001]"
    )
    het.add_argument("--deadline", type=float, default=None, help="modelled round deadline in seconds")
    het.add_argument(
        "--task-time",
        type=float,
        default=None,
        help="modelled seconds a task takes a normal-speed client (times --slowdown for slow ones); async's clock "
        "[default: 1 in async mode; in sync mode time follows --example-time and the client's examples]",
    )
    p.add_argument(  # the simulator's older name of --evaluate-every (from add_mode_arguments)
        "--eval-every",
        dest="evaluate_every",
        type=non_negative_int,
        metavar="K",
        help="the same as --evaluate-every; it also spaces the central evaluation (async: every K versions)",
    )
    p.add_argument(
        "--central-eval",
        action="store_true",
        help="also evaluate the global model in the driver on one client instance (e.g. the whole test set); "
        "its figures are the loss and accuracy columns, beside the federated eval_loss and eval_accuracy",
    )
    p.add_argument(
        "--eval-client-arg",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="arguments of the central evaluating client instance; implies --central-eval [default split=test]",
    )
    p.add_argument(
        "--no-eval", action="store_true", help="no evaluation at all, federated or central (only training figures)"
    )
    ray = p.add_argument_group(
        "cluster (fedn[ray]): the same run on a Ray cluster, bit-identical for the same --workers"
    )
    ray.add_argument("--backend", choices=("local", "ray"), default="local", help="where workers run [default local]")
    ray.add_argument("--address", default=None, help="the Ray cluster to join [default: a new one on this machine]")
    ray.add_argument("--client-cpus", type=float, default=1.0, help="Ray CPUs per worker (one client at a time) [1]")
    ray.add_argument("--client-gpus", type=float, default=0.0, help="Ray GPUs per worker (one client at a time) [0]")
    ray.add_argument(
        "--ray-timeout",
        type=float,
        default=3600.0,
        help="seconds a worker's share of a round may take; then its clients count as failed [3600]",
    )
    p.add_argument("--out", default=None, help="output directory [default sim-runs/<time>]")
    p.add_argument("--no-progress", action="store_true", help="no progress bar, only one line per round")
    p.add_argument(
        "--min-accuracy",
        type=float,
        default=None,
        help="exit 1 unless the last round's accuracy reaches this (the federated one, else the central one)",
    )
    p.set_defaults(func=run_simulate)


def _workers(value: str) -> int:
    from fedn.sim import auto_workers

    if value == "auto":
        return auto_workers()
    try:
        n = int(value)
    except ValueError:
        raise InvalidArgument(f"--workers must be a number or auto, not {value!r}") from None
    if n < 1:
        raise InvalidArgument("--workers must be at least 1")
    return n


def _backend(args: argparse.Namespace) -> dict:
    """``Simulation``'s ``make_pool`` for ``--backend``; the Ray options are refused without it."""
    if args.backend == "local":
        if args.address is not None or args.client_gpus:
            raise InvalidArgument("--address and --client-gpus are for --backend ray")
        return {}
    from fedn.sim.ray_pool import RayOptions, ray_backend

    options = RayOptions(args.address, args.client_cpus, args.client_gpus, timeout_s=args.ray_timeout)
    return {"make_pool": ray_backend(options)}


def run_simulate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedn.sim import Simulation, parse_spec, write_outputs

    if args.flower:  # the adapter class, as every client process and worker loads a class
        args.client, args.client_arg = flower_client(args.flower, args.client_arg)
    central = not args.no_eval and (args.central_eval or args.eval_client_arg is not None)
    session_mode = mode_params(args)
    every = session_mode.pop("evaluate_every")  # 0: no federated evaluation, as in a deployment
    spec = parse_spec(
        client=args.client,
        client_args=parse_client_args(args.client_arg),
        eval_args=parse_client_args(args.eval_client_arg or ["split=test"]) if central else None,
        federated_eval=not args.no_eval and every > 0,
        clients=args.clients,
        combiners=args.combiners,
        rounds=args.rounds,
        fraction=args.fraction,
        min_clients=args.min_clients,
        seed=args.seed,
        workers=_workers(args.workers),
        partition=args.partition,
        alpha=args.alpha,
        config=parse_json_object(args.config, "--config"),
        strategy=args.strategy,
        strategy_config=parse_json_object(args.strategy_config, "--strategy-config"),
        aggregator=args.aggregator,
        aggregator_config=parse_json_object(args.aggregator_config, "--aggregator-config"),
        heterogeneity={
            "dropout": args.dropout,
            "dropout_share": args.dropout_share,
            "slow_share": args.slow_share,
            "slowdown": args.slowdown,
            "example_time_s": args.example_time,
            "deadline_s": args.deadline,
            "task_time_s": args.task_time,
        },
        eval_every=max(every, 1),
        compression=args.compression,
        downlink_compression=args.downlink_compression,
        **session_mode,
    )
    out = Path(args.out or Path("sim-runs") / time.strftime("%Y%m%d-%H%M%S"))
    sim = Simulation(spec, **_backend(args))
    spec = sim.spec  # with the workers it runs (no more than the clients)
    console = Console(highlight=False, soft_wrap=True)
    console.print(
        f"fedn simulate: {spec.clients} clients in {spec.combiners} combiner groups, {spec.rounds} rounds, "
        f"{spec.workers} workers, strategy {spec.strategy}, aggregator {spec.aggregator}, "
        f"evaluation {_evaluation_kind(spec.federated_eval, spec.eval_args is not None)}"
    )
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=args.no_progress or not console.is_terminal,
    )
    task = None

    def on_progress(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            task = progress.add_task("round", total=total)
        progress.update(task, completed=done, total=total)

    def on_round(row: dict) -> None:
        nonlocal task
        if task is not None:
            progress.remove_task(task)
            task = None
        console.print(_round_line(row, spec.rounds))

    with progress:
        result = sim.run(on_round=on_round, on_progress=on_progress)
    paths = write_outputs(spec, result, out)
    for r, cid, error in result.failures[:3]:
        console.print(f"round {r}: client {cid} failed: {error}")
    final = result.rounds[-1]
    console.print(
        f"done in {result.wall_s:.1f}s, peak memory {result.peak_rss_mb:.0f} MiB (all processes); "
        f"metrics in {paths['json']} and {paths['csv']}, model in {paths['model']}"
    )
    if args.min_accuracy is not None:
        accuracy = final.get("eval_accuracy", final.get("accuracy"))
        if accuracy is None or accuracy < args.min_accuracy:
            console.print(f"final accuracy {accuracy} is below the required {args.min_accuracy:.2f}")
            return 1
    return 0 if final.get("status") == "done" else 1


_EVAL_COUNTS = ("eval_clients", "eval_failed", "eval_wall_s")


def _evaluation_kind(federated: bool, central: bool) -> str:
    kinds = [name for name, on in (("federated", federated), ("central", central)) if on]
    return " and ".join(kinds) or "off"


def _round_line(row: dict, rounds: int) -> str:
    if "group" in row:  # an async version: one group's buffer
        parts = [f"version {row['round']:>3}/{rounds}", f"group {row['group']}", f"updates {row['updates']}"]
        parts.append(f"staleness {row.get('staleness_mean', 0):.1f} (max {row.get('staleness_max', 0):g})")
        parts.append(f"t {row['modelled_time_s']:.1f} s")
    else:
        parts = [f"round {row['round']:>3}/{rounds}", f"clients {row['updates']}/{row['selected']}"]
    for key, label in (("dropped", "dropped"), ("stale", "stale"), ("stragglers", "stragglers"), ("failed", "failed")):
        if row.get(key):
            parts.append(f"{label} {row[key]}")
    if "train_loss" in row:
        parts.append(f"train loss {row['train_loss']:.4f}")
    # the federated evaluation first, in its column names (as `fedn local` prints them), then the central one
    for key in sorted(k for k in row if k.startswith("eval_") and k not in _EVAL_COUNTS):
        parts.append(f"{key} {row[key]:.4f}")
    if "eval_clients" in row:
        parts.append(
            f"eval_clients {row['eval_clients']}"
            + (f" ({row['eval_failed']} failed)" if row.get("eval_failed") else "")
        )
    if "accuracy" in row:
        parts.append(f"accuracy {row['accuracy']:.4f}")
    elif "loss" in row:
        parts.append(f"loss {row['loss']:.4f}")
    parts.append(f"{row['wall_s']:.2f} s")
    if row.get("status") != "done":
        parts.append("FAILED: too few updates")
    return " | ".join(parts)
