"""``fedn local``: run a whole federation on this machine and report each round.

Starts a reducer, combiners and clients as separate processes on 127.0.0.1
(free ports, embedded stores in a work directory), seeds a session from the
client class, prints one line per round with the global model's federated accuracy (the
clients evaluate it on their own held-out data), and stops everything it started.
"""

from __future__ import annotations

import argparse
import signal
import time
from types import FrameType

from fedn.cli.models import parse_client_args
from fedn.cli.rounds import RoundReporter
from fedn.cli.sessions import (
    add_compression_arguments,
    add_mode_arguments,
    compression_params,
    fraction,
    mode_params,
    non_negative_int,
    parse_json_object,
    positive_float,
    positive_int,
    wait_for_session,
)
from fedn.codec import decode_model, encode_model
from fedn.errors import InvalidArgument
from fedn.launcher import FederationSpec, LocalFederation
from fedn.loading import construct, flower_client, load_object
from fedn.records import Round, RoundStatus, SessionStatus
from fedn.session_options import check_session_options

__all__ = ["register"]


# A process each on this machine: past these, a typo (--clients 100000000000) forks until it gives out.
MAX_COMBINERS = 64
MAX_CLIENTS = 512


def _at_most(limit: int, what: str):
    def parse(text: str) -> int:
        value = positive_int(text)
        if value > limit:
            raise argparse.ArgumentTypeError(
                f"{text} {what} is more than the {limit} processes fedn local starts on one machine"
                + ("; fedn simulate runs many more clients" if what == "clients" else "")
            )
        return value

    return parse


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "local",
        help="run a whole federation (reducer, combiners, clients) on this machine",
        description=(
            "Start a reducer, N combiners and M clients as separate processes on 127.0.0.1, on the "
            "embedded stores (SQLite + a local directory), run a training session and print one line "
            "per round. Each client gets --client-arg partition=I num_partitions=M so it can load its "
            "own share of the data."
        ),
        epilog="example: fedn local --client examples.digits:DigitsClient --combiners 2 --clients 4 --rounds 6",
    )
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--client", help="the client class, module:Class")
    who.add_argument("--flower", metavar="MODULE:CLIENT_FN", help="a Flower client_fn, run unchanged (docs/flower.md)")
    p.add_argument(
        "--client-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keyword argument for every client (JSON value where it parses)",
    )
    p.add_argument(
        "--combiners",
        type=_at_most(MAX_COMBINERS, "combiners"),
        default=2,
        help=f"number of combiners, at most {MAX_COMBINERS} [default 2]",
    )
    p.add_argument(
        "--clients",
        type=_at_most(MAX_CLIENTS, "clients"),
        default=4,
        help=f"number of clients, at most {MAX_CLIENTS} (fedn simulate runs more) [default 4]",
    )
    p.add_argument("--rounds", type=positive_int, default=5, help="training rounds [default 5]")
    p.add_argument("--config", default="{}", help="JSON object passed to every train call [default {}]")
    p.add_argument(
        "--aggregator",
        default="fedavg",
        help="rule at each combiner: fedavg, median, trimmed_mean, krum [default fedavg]",
    )
    p.add_argument("--aggregator-config", default="{}", help="JSON object of the aggregator's parameters")
    p.add_argument(
        "--strategy",
        default="fedavg",
        help="server optimizer: fedavg, fedavgm, fedadagrad, fedadam, fedyogi [default fedavg]",
    )
    p.add_argument("--strategy-config", default="{}", help="JSON object of the strategy's parameters")
    p.add_argument(
        "--fraction", type=fraction, default=1.0, help="share of clients asked to train each round [default 1.0]"
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help="makes client sampling reproducible [default 0]")
    add_mode_arguments(p)
    add_compression_arguments(p)
    p.add_argument("--round-timeout", type=positive_float, default=60.0, help="seconds a round may take [default 60]")
    p.add_argument(
        "--min-clients",
        type=positive_int,
        default=None,
        help="updates a round needs [default: half the clients, at least 1]",
    )
    p.add_argument(
        "--eval-client-arg",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="with --central-eval: arguments for the evaluating client instance [default split=test]",
    )
    p.add_argument(
        "--central-eval",
        action="store_true",
        help="also evaluate each round's model here, on one client instance (e.g. the whole test set), "
        "beside the federated evaluation the clients make",
    )
    p.add_argument(
        "--no-eval", action="store_true", help="no evaluation at all, federated or central (--evaluate-every 0)"
    )
    p.add_argument("--min-accuracy", type=float, default=None, help="exit 1 unless the final accuracy reaches this")
    p.add_argument("--workdir", default=None, help="keep state, models and logs here [default: a temp dir]")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext and no tokens (on 127.0.0.1 only); by default a throw-away CA and tokens in the work "
        "directory give every connection TLS and every process a token",
    )
    p.add_argument(
        "--no-fork-server",
        dest="fork_server",
        action="store_false",
        help="start every process as a new interpreter; by default they are forked from one that imported "
        "their modules once, which makes the start seconds shorter",
    )
    p.set_defaults(func=run_local)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_local(args: argparse.Namespace) -> int:
    # Every check runs before the first process starts (argparse bounds each number as the reducer
    # does): a bad option costs no federation.
    if args.flower:  # the adapter class, as every client process and worker loads a class
        args.client, args.client_arg = flower_client(args.flower, args.client_arg)
    config = parse_json_object(args.config, "--config")
    strategy_config = parse_json_object(args.strategy_config, "--strategy-config")
    aggregator_params = parse_json_object(args.aggregator_config, "--aggregator-config")
    min_clients = args.min_clients or max(1, args.clients // 2)
    if args.no_eval:
        args.evaluate_every = 0
    session_mode = mode_params(args)
    check_session_options(  # a bad strategy fails before any process starts
        aggregator=args.aggregator,
        aggregator_params=aggregator_params,
        strategy=args.strategy,
        strategy_params=strategy_config,
        min_clients=min_clients,
        mode=args.mode,
        given=set(session_mode) - {"mode", "evaluate_every"},
    )
    session_mode.update(compression_params(args))
    cls = load_object(args.client)
    client_kwargs = parse_client_args(args.client_arg)
    evaluator = None
    if args.central_eval and not args.no_eval:
        eval_kwargs = parse_client_args(args.eval_client_arg if args.eval_client_arg is not None else ["split=test"])
        evaluator = construct(cls, args.client, {**client_kwargs, **eval_kwargs})
    seed_client = construct(cls, args.client, client_kwargs)
    try:
        seed_params = seed_client.initial_parameters()
    except Exception as exc:
        raise InvalidArgument(f"{args.client}.initial_parameters() failed: {type(exc).__name__}: {exc}") from None

    spec = FederationSpec(
        client=args.client,
        client_args=args.client_arg,
        num_combiners=args.combiners,
        num_clients=args.clients,
        workdir=args.workdir,
        secure=not args.insecure,
        # the reducer learns of connected clients from combiner heartbeats: a round starts this much sooner
        combiner_heartbeat_s=0.25,
        prefork=args.fork_server,
    )
    signal.signal(signal.SIGTERM, _raise_interrupt)
    started = time.monotonic()
    fed = LocalFederation(spec, on_event=lambda m: print(f"  {m}", flush=True))
    print(
        f"fedn local: 1 reducer, {args.combiners} combiners, {args.clients} clients, {args.rounds} rounds", flush=True
    )
    accuracy: float | None = None
    rounds_seen = 0
    ok = False
    try:
        fed.start()
        print(f"  work directory {fed.workdir} (logs in {fed.workdir / 'logs'})", flush=True)
        print(f"  dashboard {fed.reducer_url}/{'#token=' + fed.secrets.token('admin', 'admin') if fed.secrets else ''}")
        fed.start_clients()
        with fed.api() as api:
            seed = api.upload_model(encode_model(seed_params))
            session = api.start_session(
                rounds=args.rounds,
                round_timeout_s=args.round_timeout,
                min_clients=min_clients,
                config=config,
                model_id=seed.id,
                aggregator=args.aggregator,
                aggregator_config=aggregator_params,
                strategy=args.strategy,
                strategy_config=strategy_config,
                fraction=args.fraction,
                seed=args.seed,
                **session_mode,
            )
            print(
                f"session {session.id}: {args.rounds} rounds, strategy {args.strategy}, "
                f"min {min_clients} updates per round",
                flush=True,
            )
            if evaluator is not None:
                accuracy = _evaluate(evaluator, api.download_model(seed.id))
                print(f"round   0 | seed model | accuracy {accuracy:.4f}", flush=True)

            def on_round(r: Round) -> None:
                nonlocal accuracy, rounds_seen
                rounds_seen += 1
                federated = r.evaluation.metrics.get("accuracy") if r.evaluation is not None else None
                if federated is not None:
                    accuracy = federated.mean  # the clients' own held-out data, weighted by examples
                central = None
                if evaluator is not None:
                    done = r.status == RoundStatus.DONE and r.model_out
                    value = _evaluate(evaluator, api.download_model(r.model_out)) if done else None
                    central = {"accuracy": value}
                    if federated is None and value is not None:
                        accuracy = value
                report.round(r, central)

            with RoundReporter(args.rounds) as report:
                session = wait_for_session(
                    api, session.id, on_round=on_round, poll_s=0.1, timeout_s=args.rounds * (args.round_timeout + 30)
                )
            if session.status not in (SessionStatus.DONE, SessionStatus.FAILED, SessionStatus.STOPPED):
                print(f"session {session.id} did not finish in time", flush=True)
            ok = session.status == SessionStatus.DONE
            if not ok:
                print(f"session {session.id} {session.status}: {session.error}", flush=True)
    except KeyboardInterrupt:
        print("interrupted; stopping the federation", flush=True)
    finally:
        codes = fed.stop()
        unclean = {name: code for name, code in codes.items() if code not in (0, None)}
        stopped = f"stopped {len(codes)} processes"
        print(stopped + (f" (non-zero exits: {unclean})" if unclean else ""), flush=True)
    elapsed = time.monotonic() - started
    if accuracy is not None:
        print(f"final accuracy {accuracy:.4f} after {rounds_seen} rounds in {elapsed:.1f}s", flush=True)
    if not ok:
        return 1
    if args.min_accuracy is not None and (accuracy is None or accuracy < args.min_accuracy):
        print(f"final accuracy below the required {args.min_accuracy:.2f}", flush=True)
        return 1
    return 0


def _evaluate(evaluator: object, blob: bytes) -> float:
    params = {name: a.copy() for name, a in decode_model(blob).items()}
    _loss, _num_examples, metrics = evaluator.evaluate(params, {})
    return float(metrics.get("accuracy", float("nan")))
