"""``fedn session start|list|show``: drive training through the reducer's REST API."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from fedn.api_client import ReducerAPI
from fedn.cli.connect import add_reducer_arguments, reducer_api
from fedn.errors import InvalidArgument
from fedn.records import Round, RoundStatus, Session, SessionStatus

__all__ = ["add_mode_arguments", "format_round", "mode_params", "parse_json_object", "register", "wait_for_session"]


def register(commands: argparse._SubParsersAction) -> None:
    session = commands.add_parser("session", help="start and inspect training sessions")
    sub = session.add_subparsers(dest="session_command", metavar="ACTION", required=True)

    start = sub.add_parser("start", help="start a training session on the reducer")
    add_reducer_arguments(start)
    start.add_argument("--rounds", type=int, default=5, help="number of rounds [default 5]")
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
    start.add_argument("--round-timeout", type=float, default=60.0, help="seconds a round may take [default 60]")
    start.add_argument("--min-clients", type=int, default=1, help="updates a round needs to succeed [default 1]")
    start.add_argument(
        "--fraction",
        type=float,
        default=1.0,
        help="share of connected clients asked to train each round, spread over combiners by "
        "their client counts [default 1.0]",
    )
    start.add_argument("--seed", type=int, default=0, help="makes client sampling reproducible [default 0]")
    start.add_argument("--model", default=None, help="seed model id [default: the newest uploaded model]")
    start.add_argument(
        "--config", default="{}", help="JSON object sent to every client's train, e.g. '{\"epochs\": 2}'"
    )
    add_mode_arguments(start)
    start.add_argument("--wait", action="store_true", help="follow the session and print one line per round")
    start.set_defaults(func=_start)

    show = sub.add_parser("show", help="show one session and its rounds")
    show.add_argument("session_id")
    add_reducer_arguments(show)
    show.set_defaults(func=_show)

    lst = sub.add_parser("list", help="list sessions, newest first")
    add_reducer_arguments(lst)
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
    parser.add_argument("--buffer-size", type=int, default=None, help="async: updates per partial, K [default 10]")
    parser.add_argument(
        "--staleness-exponent",
        type=float,
        default=None,
        help="async: an update s versions old is scaled by (1+s)^-exponent [default 0.5]",
    )
    parser.add_argument(
        "--max-staleness", type=int, default=None, help="async: drop updates older than this [default 0 = no limit]"
    )


def mode_params(args: argparse.Namespace) -> dict:
    """The session parameters of :func:`add_mode_arguments`; async options only where given."""
    params: dict = {"mode": args.mode}
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
    }
    if args.model:
        params["model_id"] = args.model
    with reducer_api(args) as api:
        session = api.start_session(**params)
        print(f"session {session.id} started: {session.rounds} rounds from model {session.seed_model_id}")
        if not args.wait:
            return 0
        final = wait_for_session(api, session.id, on_round=lambda r: print(format_round(r)))
        print(f"session {final.id} {final.status}: {final.error or 'ok'}")
        return 0 if final.status == SessionStatus.DONE else 1


def wait_for_session(
    api: ReducerAPI,
    session_id: str,
    *,
    on_round: Callable[[Round], None] | None = None,
    poll_s: float = 0.5,
    timeout_s: float | None = None,
) -> Session:
    """Follow a session until it ends, calling ``on_round`` once per finished round."""
    reported: set[str] = set()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        session = api.get_session(session_id)
        for round_ in api.list_rounds(session_id):
            if round_.status in (RoundStatus.DONE, RoundStatus.FAILED) and round_.id not in reported:
                reported.add(round_.id)
                if on_round:
                    on_round(round_)
        if session.status in (SessionStatus.DONE, SessionStatus.FAILED):
            return session
        if deadline is not None and time.monotonic() > deadline:
            return session
        time.sleep(poll_s)


def format_round(r: Round) -> str:
    loss = r.metrics.get("train_loss")
    loss_text = f"{loss.mean:.4f}" if loss else "-"
    text = (
        f"round {r.index:>3} {r.status:<6} combiners={len(r.combiners)} clients={r.num_updates}/{r.num_selected} "
        f"train_loss={loss_text} time={r.duration_s or 0:.2f}s"
    )
    if r.failures:
        text += f" failed={len(r.failures)}"
    if r.reason:
        text += f" reason={r.reason}"
    return text


def _show(args: argparse.Namespace) -> int:
    with reducer_api(args) as api:
        session = api.get_session(args.session_id)
        print(session.model_dump_json(indent=2))
        for r in api.list_rounds(session.id):
            print(format_round(r))
    return 0


def _list(args: argparse.Namespace) -> int:
    with reducer_api(args) as api:
        for s in api.list_sessions():
            print(f"{s.id}  {s.status:<8} rounds {s.rounds_done}/{s.rounds}  aggregator={s.aggregator}")
    return 0
