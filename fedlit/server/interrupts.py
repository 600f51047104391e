"""How a run ends early: a signal (resumable from the last complete round) or nothing trained at all."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path


class RunInterrupted(BaseException):
    """SIGTERM or SIGINT arrived during a run. A BaseException, so that no client-fault handler swallows it; the
    last complete round's checkpoint stays valid and ``--resume`` continues from it."""

    def __init__(self, signum: int, server_round: int, checkpoint_dir: Path) -> None:
        self.signum = signum
        name = signal.Signals(signum).name
        done = f"round {server_round - 1} is the last complete one" if server_round > 0 else "no round is complete"
        super().__init__(f"interrupted by {name} during round {server_round}; {done} (checkpoints in "
                         f"{checkpoint_dir}): continue with --resume true")


class NothingTrained(RuntimeError):
    """No round of the run produced a new global adapter (every round skipped, or the privacy budget was spent
    before the first)."""


@contextlib.contextmanager
def interrupt_on_signals(current_round: Callable[[], int], checkpoint_dir: Path) -> Iterator[None]:
    """Turn SIGTERM and SIGINT into :class:`RunInterrupted` naming the round in progress (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise RunInterrupted(signum, current_round(), checkpoint_dir)

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
