"""A run's output directory: one run at a time (an exclusive lock), and never a new run over an old run's files."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

# What the loop writes; algorithms add their own (FedCoLLM's client_slm/, FedOST's plugged_in/, ...).
LOOP_OUTPUTS = ("checkpoints", "metrics.csv", "adapter", "logs", "partition.csv", "partition.png", "client_state",
                "summary.json")
ALGORITHM_OUTPUTS = ("client_slm", "llm_adapter", "client_package", "plugged_in", "offsite.json")
LOCK_NAME = ".fedlit.lock"

_held: dict[Path, int] = {}  # resolved output dir -> the open, locked lock file's descriptor


class OutputDirError(RuntimeError):
    """The output directory cannot take this run (locked by another, or holding an earlier run)."""


def lock_output_dir(path: str | Path) -> None:
    """Take the exclusive lock on ``path`` for this process (again taking it is a no-op); fail at once,
    naming the holder's pid, when another process holds it. The OS drops the lock when the holder dies."""
    path = Path(path)
    key = path.resolve()
    if key in _held:
        return
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise OutputDirError(f"output_dir '{path}' is in use by another fedlit run (pid {holder}); wait for it "
                             "to finish or choose another --output_dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = fd


def unlock_output_dir(path: str | Path) -> None:
    """Release this process's lock on ``path`` (no-op when it holds none)."""
    fd = _held.pop(Path(path).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock


def earlier_outputs(path: str | Path, names: tuple[str, ...] = LOOP_OUTPUTS + ALGORITHM_OUTPUTS) -> list[str]:
    """Which of ``names`` already exist in ``path`` (directories with a trailing slash)."""
    path = Path(path)
    return [f"{name}/" if (path / name).is_dir() else name for name in names if (path / name).exists()]


def check_fresh(path: str | Path, names: tuple[str, ...] = LOOP_OUTPUTS + ALGORITHM_OUTPUTS) -> None:
    """Refuse to start a new run in ``path`` when an earlier run's outputs are there, before anything is written,
    saying what is there and what to do (in ``make`` terms when run from make)."""
    found = earlier_outputs(path, names)
    if not found:
        return
    if os.environ.get("MAKELEVEL"):
        todo = ("continue it with `make run ARGS='--resume true'`, start another with `make run OUTPUT_DIR=...`, "
                "or delete outputs/ with `make clean`")
    else:
        todo = "continue it with --resume true, or start another with a new --output_dir"
    raise OutputDirError(f"output_dir '{path}' already holds a run ({', '.join(found)}): {todo}")
