"""One line per round, shared by ``fedn local`` and ``fedn session start --wait``, and their progress bar.

The plain line is what tests, CI and scripts read; keep its shape stable::

    round   3/6 | combiners 2 | clients 4/4 | train_loss 0.4123 | eval_accuracy 0.9012 | 0.95 s

Training metrics come first (``train_loss`` always, ``-`` when no client reported it), then the
federated evaluation's metrics prefixed ``eval_`` when the round carries one, then any figure the
caller adds (``fedn local``'s central ``accuracy``), the duration, and failures last.
On a terminal the same lines scroll above a rich progress bar of the rounds.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedn.records import Round, RoundStatus

__all__ = ["RoundReporter", "format_round"]


def _value(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"


def _summaries(metrics: Mapping[str, object], prefix: str = "") -> list[str]:
    """``name value`` for each metric summary (its mean), in name order."""
    return [f"{prefix}{name} {_value(getattr(summary, 'mean', None))}" for name, summary in sorted(metrics.items())]


def _metric_parts(r: Round, extra: Mapping[str, float | None] | None) -> list[str]:
    training = dict(r.metrics)
    parts = [f"train_loss {_value(getattr(training.pop('train_loss', None), 'mean', None))}"]
    parts += _summaries(training)
    evaluation = getattr(r, "evaluation", None)  # set on rounds whose selected clients evaluated the new model
    if evaluation is not None:
        parts += _summaries(getattr(evaluation, "metrics", None) or {}, prefix="eval_")
    return parts + [f"{name} {_value(value)}" for name, value in (extra or {}).items()]


def format_round(r: Round, rounds: int | None = None, extra: Mapping[str, float | None] | None = None) -> str:
    """The round's line: index, combiners, clients, training then ``eval_`` metrics, ``extra``, time, failures."""
    index = f"{r.index:>3}/{rounds}" if rounds else f"{r.index:>3}"
    parts = [f"round {index}", f"combiners {len(r.combiners)}", f"clients {r.num_updates}/{r.num_selected}"]
    parts += _metric_parts(r, extra)
    parts.append(f"{r.duration_s or 0.0:5.2f} s")
    if r.status == RoundStatus.FAILED:
        parts.append(f"FAILED: {r.reason or 'no reason given'}")
    elif r.failures:
        parts.append(
            f"{len(r.failures)} failed: "
            + "; ".join(f"{f.client_id or f.combiner_id}: {f.error}" for f in r.failures[:3])
        )
    return " | ".join(parts)


class RoundReporter:
    """Prints round lines; on a terminal, above a progress bar of the rounds showing the last metrics.

    Not a terminal (a pipe, a file, CI): plain lines only, flushed one by one.
    """

    def __init__(self, total: int, stream: TextIO | None = None, *, force_terminal: bool | None = None) -> None:
        self._total = total
        self._stream = stream
        self._force_terminal = force_terminal
        self._progress: Progress | None = None
        self._task = None

    def __enter__(self) -> RoundReporter:
        stream = self._stream if self._stream is not None else sys.stdout
        console = Console(file=stream, force_terminal=self._force_terminal)
        if console.is_terminal:
            self._progress = Progress(
                TextColumn("rounds"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
                console=console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("", total=self._total)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def line(self, text: str) -> None:
        """A line that is not a round (a start or end message), printed above the bar."""
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            stream = self._stream if self._stream is not None else sys.stdout
            print(text, file=stream, flush=True)

    def round(self, r: Round, extra: Mapping[str, float | None] | None = None) -> None:
        text = format_round(r, self._total, extra)
        self.line(text)
        if self._progress is not None and self._task is not None:
            description = " | ".join(_metric_parts(r, extra))
            self._progress.update(self._task, completed=min(r.index, self._total), description=description)
