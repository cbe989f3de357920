"""``fedn session start|evaluate|stop|list|show``: drive training through the reducer's REST API."""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable

from fedn.api_client import ReducerAPI
from fedn.cli.connect import add_reducer_arguments, reducer_api
from fedn.cli.listing import add_list_arguments, list_limit, print_json, report_truncation
from fedn.cli.rounds import RoundReporter, format_round
from fedn.compression import parse_compression
from fedn.errors import InvalidArgument
from fedn.records import Round, RoundStatus, Session, SessionStatus
from fedn.session_options import session_compression

__all__ = [
    "add_compression_arguments",
    "add_mode_arguments",
    "compression_params",
    "format_round",
    "fraction",
    "mode_params",
    "non_negative_int",
    "parse_json_object",
    "positive_float",
    "positive_int",
    "register",
    "wait_for_session",
]

# The reducer's bounds for a session (reducer/requests.py SessionRequest), checked here too so that
# `fedn local` refuses a bad option before it starts a single process.


def _number(kind: type, text: str) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    value = _number(int, text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    value = _number(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


def positive_float(text: str) -> float:
    value = _number(float, text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be more than 0")
    return value


def _staleness_exponent(text: str) -> float:
    value = _number(float, text)
    if not 0 <= value <= 10:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 10")
    return value


def fraction(text: str) -> float:
    value = _number(float, text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} must be in (0, 1]: a share of the clients")
    return value


def register(commands: argparse._SubParsersAction) -> None:
    session = commands.add_parser("session", help="start and inspect training sessions")
    sub = session.add_subparsers(dest="session_command", metavar="ACTION", required=True)

    start = sub.add_parser("start", help="start a training session on the reducer")
    add_reducer_arguments(start)
    start.add_argument("--rounds", type=positive_int, default=5, help="number of rounds [default 5]")
    start.add_argument(
        "--aggregator",
        default="fedavg",
        help="rule at each combiner: fedavg, median, trimmed_mean, krum [default fedavg]",
    )
    start.add_argument(
        "--aggregator-config",
        default="{}",
        help="JSON object of the aggregator's parameters, e.g. '{\"beta\": 0.2}' for trimmed_mean",
    )
    start.add_argument(
        "--strategy",
        default="fedavg",
        help="server optimizer at the reducer: fedavg, fedavgm, fedadagrad, fedadam, fedyogi [default fedavg]",
    )
    start.add_argument(
        "--strategy-config",
        default="{}",
        help='JSON object of the strategy\'s parameters, e.g. \'{"eta": 0.01, "beta1": 0.9}\'',
    )
    start.add_argument(
        "--round-timeout", type=positive_float, default=60.0, help="seconds a round may take [default 60]"
    )
    start.add_argument(
        "--min-clients", type=positive_int, default=1, help="updates a round needs to succeed [default 1]"
    )
    start.add_argument(
        "--fraction",
        type=fraction,
        default=1.0,
        help="share of connected clients asked to train each round, spread over combiners by "
        "their client counts [default 1.0]",
    )
    start.add_argument(
        "--seed", type=non_negative_int, default=0, help="makes client sampling reproducible [default 0]"
    )
    start.add_argument(
        "--model",
        default=None,
        metavar="MODEL_ID",
        help="model to start from [default: the newest model in the store, which is the previous session's "
        "output when it ran after your last upload; `fedn model list` shows them newest first]",
    )
    start.add_argument(
        "--config", default="{}", help="JSON object sent to every client's train, e.g. '{\"epochs\": 2}'"
    )
    add_mode_arguments(start)
    add_compression_arguments(start)
    start.add_argument(
        "--wait",
        action="store_true",
        help="follow the session: one line per round (above a progress bar on a terminal); exit 0 when it "
        "finishes, 1 when it fails",
    )
    start.set_defaults(func=_start)

    evaluate = sub.add_parser(
        "evaluate", help="evaluate a stored model on the clients' own held-out data (nothing trains)"
    )
    add_reducer_arguments(evaluate)
    evaluate.add_argument("--model", required=True, metavar="MODEL_ID", help="the model to evaluate")
    evaluate.add_argument(
        "--min-clients", type=positive_int, default=1, help="evaluations needed to succeed [default 1]"
    )
    evaluate.add_argument(
        "--fraction", type=fraction, default=1.0, help="share of connected clients asked [default 1.0]"
    )
    evaluate.add_argument(
        "--round-timeout", type=positive_float, default=60.0, help="seconds the evaluation may take [default 60]"
    )
    evaluate.add_argument("--seed", type=non_negative_int, default=0, help="makes client sampling reproducible")
    evaluate.add_argument(
        "--config", default="{}", help="JSON object sent to every client's evaluate, e.g. '{\"batch_size\": 64}'"
    )
    evaluate.add_argument("--wait", action="store_true", help="wait for the result and print it")
    evaluate.set_defaults(func=_evaluate)

    stop = sub.add_parser(
        "stop", help="stop a running session (its round is abandoned) or cancel a pending one (admin)"
    )
    stop.add_argument("session_id")
    add_reducer_arguments(stop)
    stop.add_argument("--wait", action="store_true", help="wait until the session has ended")
    stop.set_defaults(func=_stop)

    show = sub.add_parser("show", help="show one session and its rounds")
    show.add_argument("session_id")
    show.add_argument("--json", action="store_true", help="one JSON document: the session and its rounds")
    add_reducer_arguments(show)
    show.set_defaults(func=_show)

    lst = sub.add_parser("list", help="list sessions, newest first")
    add_reducer_arguments(lst)
    add_list_arguments(lst, "sessions")
    lst.set_defaults(func=_list)


def add_mode_arguments(parser: argparse.ArgumentParser) -> None:
    """--mode and the async (FedBuff) options, shared by ``fedn session start`` and ``fedn local``."""
    parser.add_argument(
        "--mode",
        choices=["sync", "async"],
        default="sync",
        help="sync: rounds; async: FedBuff, clients train continuously and each combiner's buffer of "
        "--buffer-size updates makes a new global version [default sync]",
    )
    parser.add_argument(
        "--buffer-size", type=positive_int, default=None, help="async: updates per partial, K [default 10]"
    )
    parser.add_argument(
        "--staleness-exponent",
        type=_staleness_exponent,
        default=None,
        help="async: an update s versions old is scaled by (1+s)^-exponent [default 0.5]",
    )
    parser.add_argument(
        "--max-staleness",
        type=non_negative_int,
        default=None,
        help="async: drop updates older than this [default 0 = no limit]",
    )
    parser.add_argument(
        "--evaluate-every",
        type=non_negative_int,
        default=1,
        metavar="K",
        help="the selected clients evaluate the new global model on their own held-out data every K rounds "
        "and after the last (0: never; async: the final model) [default 1]",
    )


def _compression_text(text: str) -> str:
    try:
        return parse_compression(text).text()
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def add_compression_arguments(parser: argparse.ArgumentParser) -> None:
    """--compression and --downlink-compression, shared by ``fedn session start`` and ``fedn local``."""
    parser.add_argument(
        "--compression",
        type=_compression_text,
        default="none",
        metavar="CODEC",
        help="codec of the clients' updates: none, float16, int8[:block=N,stochastic=false], "
        "topk[:ratio=R,momentum=M]; sync mode only (docs/compression.md) [default none]",
    )
    parser.add_argument(
        "--downlink-compression",
        type=_compression_text,
        default="none",
        metavar="CODEC",
        help="codec of the global model sent to the clients: none, float16, int8[:block=N]; sync mode only "
        "[default none]",
    )


def compression_params(args: argparse.Namespace) -> dict:
    """The session parameters of :func:`add_compression_arguments`, checked against ``args.mode``; only
    those that compress are sent, so a reducer from before compression still takes a session without."""
    uplink, downlink = session_compression(args.compression, args.downlink_compression, args.mode)
    return {
        name: text for name, text in (("compression", uplink), ("downlink_compression", downlink)) if text != "none"
    }


def mode_params(args: argparse.Namespace) -> dict:
    """The session parameters of :func:`add_mode_arguments`; async options only where given."""
    params: dict = {"mode": args.mode, "evaluate_every": args.evaluate_every}
    for name in ("buffer_size", "staleness_exponent", "max_staleness"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    return params


def parse_json_object(text: str, flag: str) -> dict:
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{flag} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise InvalidArgument(f"{flag} must be a JSON object")
    return config


def _start(args: argparse.Namespace) -> int:
    params = {
        "rounds": args.rounds,
        "aggregator": args.aggregator,
        "aggregator_config": parse_json_object(args.aggregator_config, "--aggregator-config"),
        "strategy": args.strategy,
        "strategy_config": parse_json_object(args.strategy_config, "--strategy-config"),
        "round_timeout_s": args.round_timeout,
        "min_clients": args.min_clients,
        "fraction": args.fraction,
        "seed": args.seed,
        "config": parse_json_object(args.config, "--config"),
        **mode_params(args),
        **compression_params(args),
    }
    if args.model:
        params["model_id"] = args.model
    with reducer_api(args) as api:
        session = api.start_session(**params)
        print(f"session {session.id} started: {session.rounds} rounds from model {session.seed_model_id}", flush=True)
        if not args.wait:
            return 0
        with RoundReporter(session.rounds) as report:
            final = wait_for_session(api, session.id, on_round=report.round)
        print(f"session {final.id} {final.status}: {final.error or 'ok'}")
        return 0 if final.status == SessionStatus.DONE else 1


def _evaluate(args: argparse.Namespace) -> int:
    params = {
        "mode": "evaluate",
        "rounds": 1,
        "model_id": args.model,
        "min_clients": args.min_clients,
        "fraction": args.fraction,
        "round_timeout_s": args.round_timeout,
        "seed": args.seed,
        "config": parse_json_object(args.config, "--config"),
    }
    with reducer_api(args) as api:
        session = api.start_session(**params)
        print(f"session {session.id}: evaluating model {args.model}", flush=True)
        if not args.wait:
            return 0
        final = wait_for_session(api, session.id)
        for r in api.list_rounds(session.id):
            print(format_round(r, 1))
        print(f"session {final.id} {final.status}: {final.error or 'ok'}")
        return 0 if final.status == SessionStatus.DONE else 1


def _stop(args: argparse.Namespace) -> int:
    with reducer_api(args) as api:
        session = api.stop_session(args.session_id)
        if session.status == SessionStatus.STOPPED:
            print(f"session {session.id} stopped (it had not started)")
            return 0
        print(f"session {session.id}: stopping (asked by {session.stop_requested_by})", flush=True)
        if args.wait:
            session = wait_for_session(api, session.id)
            print(f"session {session.id} {session.status} after {session.rounds_done} of {session.rounds} rounds")
    return 0


def wait_for_session(
    api: ReducerAPI,
    session_id: str,
    *,
    on_round: Callable[[Round], None] | None = None,
    poll_s: float = 0.5,
    timeout_s: float | None = None,
) -> Session:
    """Follow a session until it ends, calling ``on_round`` once per finished round (a round that is to be
    evaluated on the clients once its evaluation is in, or once the session moved on without it)."""
    reported: set[str] = set()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    ended = (SessionStatus.DONE, SessionStatus.FAILED, SessionStatus.STOPPED)
    while True:
        session = api.get_session(session_id)
        rounds = list(api.list_rounds(session_id))
        last_index = max((r.index for r in rounds), default=0)
        for round_ in rounds:
            if round_.id in reported or round_.status in (RoundStatus.PENDING, RoundStatus.RUNNING):
                continue
            done = round_.status == RoundStatus.DONE
            waiting = done and round_.evaluation is None and session.evaluates(round_.index)
            if waiting and session.status not in ended and round_.index >= last_index:
                continue  # its evaluation is on the way
            reported.add(round_.id)
            if on_round:
                on_round(round_)
        if session.status in ended:
            return session
        if deadline is not None and time.monotonic() > deadline:
            return session
        time.sleep(poll_s)


def _show(args: argparse.Namespace) -> int:
    with reducer_api(args) as api:
        session = api.get_session(args.session_id)
        rounds = api.list_rounds(session.id)
    if args.json:
        document = {**session.model_dump(mode="json"), "rounds": [r.model_dump(mode="json") for r in rounds]}
        print(json.dumps(document, indent=2))
        return 0
    print(session.model_dump_json(indent=2))
    for r in rounds:
        print(format_round(r, session.rounds))
    return 0


def _list(args: argparse.Namespace) -> int:
    limit = list_limit(args)
    with reducer_api(args) as api:
        page = api.list_sessions(limit=limit)
    if args.json:
        print_json(page)
        return 0
    for s in page:
        print(f"{s.id}  {s.status:<8} rounds {s.rounds_done}/{s.rounds}  aggregator={s.aggregator}")
    report_truncation(page, "sessions")
    return 0
