"""A Trainer that spans several devices inside a process that goes on after the fit: a client's fit in the
federated loop or on a Ray worker. Lightning's ``ddp`` starts its ranks by running the command again,
which would run the whole federation once per rank; here each fit starts its ranks as child processes (spawn, or
fork when asked), every rank trains and runs the callbacks, and rank 0's results come back to the process that
answers the server: the trainable tensors (never the frozen base) and the end state of each callback that declares
one (``END_STATE``: a client mod's update, its masked vector, its compressed bytes)."""

from __future__ import annotations

import logging
import pickle
import signal
import tempfile
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher, _WorkerOutput
from lightning.pytorch.trainer.states import TrainerFn
from torch.multiprocessing.spawn import ProcessException

# Strategies a fit can span devices with, by Lightning's names: how their ranks start here.
START_METHODS = {"ddp": "spawn", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}
# Sharding strategies: their ranks would have to gather the trainable tensors from shards before the fit's
# teardown, which nothing here can test (torch's FSDP needs a GPU; DeepSpeed is not installed).
SHARDING = ("fsdp", "deepspeed")


def end_state_holders(trainer: L.Trainer) -> list[Any]:
    """The Trainer's callbacks that declare an ``END_STATE`` (attribute names), in the Trainer's order."""
    return [callback for callback in trainer.callbacks if getattr(callback, "END_STATE", ())]


@dataclass
class QuietSettings:
    """The fit's process's logger levels and warning filters, for its ranks: spawned ones start from a fresh
    interpreter and would print every banner and warning the process silenced, once per rank per fit."""

    levels: dict[str, int]
    filters: list[Any]

    @classmethod
    def capture(cls) -> QuietSettings:
        loggers = logging.root.manager.loggerDict.items()
        return cls({name: found.level for name, found in loggers if isinstance(found, logging.Logger) and found.level},
                   list(warnings.filters))

    def restore(self) -> None:
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)
        warnings.filters[:] = self.filters


class RankZeroReturns(_MultiProcessingLauncher):
    """Lightning's launcher for spawned or forked ranks, returning what a federated fit needs and nothing more: rank
    0's trainable tensors (Lightning's would write the whole module, frozen base included, to a file each fit) and
    its callbacks' end states; a rank's exception is raised again here as itself (a client whose update is unusable
    stays that client's failure)."""

    def launch(self, function: Any, *args: Any, trainer: L.Trainer | None = None, **kwargs: Any) -> Any:
        self._quiet = QuietSettings.capture()
        # Rank 0's results and each rank's exception go through files in a directory only this process's user can
        # enter: Lightning reads its queue only once every rank has exited, and a rank blocks on a put beyond a
        # pipe's buffer; torch's own traceback files would stay behind in the shared temp directory.
        with tempfile.TemporaryDirectory(prefix="fedlit-ranks-") as handover:
            self._handover = Path(handover)
            self._results_file = self._handover / "rank_zero.pickle"
            try:
                return super().launch(function, *args, trainer=trainer, **kwargs)
            except ProcessException as ended:
                raise self._rank_failure(ended) from None
            finally:  # (a deadline or an interrupt in this process: its ranks end with the fit)
                self.kill(signal.SIGKILL)
                for process in self.procs:
                    process.join()

    def _rank_failure(self, ended: ProcessException) -> BaseException:
        """The exception of the rank that raised first (the others may only have lost their peer), as itself
        where it pickles both ways, else as its traceback; ranks that ended without raising (killed) as torch
        reports them."""
        raised = sorted(self._handover.glob("rank_*_failure.pickle"), key=lambda found: found.stat().st_mtime_ns)
        if not raised:
            return ended
        failure = pickle.loads(raised[0].read_bytes())  # (its own child's, in its own directory)
        try:
            return pickle.loads(failure["error"])
        except Exception:
            return RuntimeError(f"{raised[0].stem.removesuffix('_failure').replace('_', ' ')} of the fit failed:\n"
                                f"{failure['trace']}")

    def _wrapping_function(self, process_idx: int, *args: Any, **kwargs: Any) -> None:
        self._quiet.restore()
        try:
            super()._wrapping_function(process_idx, *args, **kwargs)
        except Exception as error:
            try:
                pickled = pickle.dumps(error)
            except Exception:
                pickled = b""
            failure = {"error": pickled, "trace": traceback.format_exc()}
            (self._handover / f"rank_{process_idx}_failure.pickle").write_bytes(pickle.dumps(failure))
            raise SystemExit(1) from None  # (torch writes a traceback file of its own only for an exception)

    def _collect_rank_zero_results(self, trainer: L.Trainer, results: Any) -> _WorkerOutput | None:
        fitting = trainer.state.fn == TrainerFn.FITTING
        trainable = trainer.lightning_module.trainable_state_dict() if fitting else None  # (DDP: replicas)
        if self._strategy.local_rank != 0:
            return None
        self._results_file.write_bytes(pickle.dumps({
            "trainable": trainable,
            "end_states": [{name: getattr(holder, name) for name in holder.END_STATE}
                           for holder in end_state_holders(trainer)],
        }))
        return _WorkerOutput(None, None, trainer.state, results, self.get_extra_results(trainer))

    def update_main_process_results(self, trainer: L.Trainer, extra: dict[str, Any]) -> None:
        super().update_main_process_results(trainer, extra)
        found = pickle.loads(self._results_file.read_bytes())  # (its own child's, in its own directory)
        if found["trainable"] is not None:
            trainer.lightning_module.load_trainable_state_dict(found["trainable"], who="rank 0 of the fit")
        for holder, state in zip(end_state_holders(trainer), found["end_states"], strict=True):
            for name, value in state.items():
                setattr(holder, name, value)


class SpanningDDP(DDPStrategy):
    """Lightning's DDP with its ranks started by :class:`RankZeroReturns` (``start_method`` spawn or fork)."""

    def __init__(self, *args: Any, start_method: str = "spawn", **kwargs: Any) -> None:
        if start_method not in ("spawn", "fork", "forkserver"):
            raise ValueError(f"strategy start_method '{start_method}': a client fit starts its ranks by spawn, fork "
                             "or forkserver (popen would run the whole command again in each rank)")
        super().__init__(*args, start_method=start_method, **kwargs)

    def _configure_launcher(self) -> None:
        self._launcher = RankZeroReturns(self, start_method=self._start_method)


def spanning_strategy(name: str) -> L.pytorch.strategies.Strategy:
    """The strategy Lightning names ``name`` (``ddp``, ``ddp_spawn``, ``ddp_fork``, with or without
    ``_find_unused_parameters_true``), its ranks started by :class:`RankZeroReturns`; any other is refused."""
    if name.startswith(SHARDING):
        raise ValueError(f"trainer.strategy '{name}': a client fit spans devices with DDP only for now (each rank "
                         "holds the whole frozen base: a 4-bit 70B fits an 80 GB GPU); sharded fits are not supported")
    base = name.removesuffix("_find_unused_parameters_true").removesuffix("_find_unused_parameters_false")
    if base not in START_METHODS:
        raise ValueError(f"trainer.strategy '{name}': a client fit spans devices with one of "
                         f"{', '.join(START_METHODS)} (or a single device)")
    init_params = {key: value for key, value in StrategyRegistry[name]["init_params"].items() if key != "start_method"}
    return SpanningDDP(start_method=START_METHODS[base], **init_params)
