"""A W&B sweep file (``method``, ``metric``, ``parameters``, ``command``) read and checked, and its parameters'
distributions as W&B defines them (https://docs.wandb.ai/guides/sweeps/sweep-config-keys)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]  # W&B's default
NESTING = "."  # how a nested parameter is named in sweep.csv and messages
GRID_KINDS = ("constant", "categorical", "int_uniform", "q_uniform")
BOUNDED = ("uniform", "q_uniform", "log_uniform", "q_log_uniform", "log_uniform_values", "q_log_uniform_values",
           "inv_log_uniform", "inv_log_uniform_values", "int_uniform")
KINDS = ("constant", "categorical", "categorical_w_probabilities", *BOUNDED, "normal", "q_normal", "log_normal",
         "q_log_normal")


# the sweep-file keys W&B defines that an offline sweep honours (project, entity, description: W&B's bookkeeping)
KEYS = ("method", "metric", "parameters", "command", "program", "run_cap", "name", "description", "project", "entity")


class SweepError(ValueError):
    """The sweep file cannot be run; the message names the file and key."""


def _kind(name: str, config: dict[str, Any]) -> str:
    """The distribution W&B infers when none is named: value, values (with probabilities), int or real bounds."""
    if "distribution" in config:
        return str(config["distribution"])
    if "value" in config:
        return "constant"
    if "values" in config:
        return "categorical_w_probabilities" if "probabilities" in config else "categorical"
    if "min" in config and "max" in config:
        both_int = all(isinstance(config[k], int) and not isinstance(config[k], bool) for k in ("min", "max"))
        return "int_uniform" if both_int else "uniform"
    raise SweepError(f"parameters.{name}: give value, values, min/max or a distribution")


@dataclass(frozen=True)
class Parameter:
    """One swept parameter: its key path (one key, or several for a nested ``parameters:`` block), W&B
    distribution and that distribution's settings."""

    path: tuple[str, ...]
    kind: str
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return NESTING.join(self.path)

    @classmethod
    def parse(cls, path: tuple[str, ...], config: dict[str, Any]) -> Parameter:
        name = NESTING.join(path)
        kind = _kind(name, config)
        if kind not in KINDS:
            raise SweepError(f"parameters.{name}: distribution '{kind}' is not supported offline (supported: "
                             f"{', '.join(KINDS)})")
        if kind in BOUNDED:
            for key in ("min", "max"):
                if not isinstance(config.get(key), (int, float)) or isinstance(config.get(key), bool):
                    raise SweepError(f"parameters.{name}.{key}: {config.get(key)!r} is not a number (YAML reads 1e-4 "
                                     "as text: write 1.0e-4)")
            if config["min"] >= config["max"]:
                raise SweepError(f"parameters.{name}: min {config['min']} is not less than max {config['max']}")
        if kind.startswith("categorical") and not config.get("values"):
            raise SweepError(f"parameters.{name}.values: give at least one value")
        if kind == "categorical_w_probabilities" and (len(config["probabilities"]) != len(config["values"])
                                                      or not math.isclose(sum(config["probabilities"]), 1.0)):
            raise SweepError(f"parameters.{name}.probabilities: one per value, summing to 1")
        return cls(path, kind, dict(config))

    def grid_values(self) -> list[Any]:
        """The values a grid search takes (W&B: int_uniform min..max inclusive, q_uniform numpy's arange)."""
        c = self.config
        if self.kind == "constant":
            return [c["value"]]
        if self.kind == "categorical":
            return list(c["values"])
        if self.kind == "int_uniform":
            return list(range(c["min"], c["max"] + 1))
        if self.kind == "q_uniform":
            return np.arange(c["min"], c["max"], c.get("q", 1.0)).tolist()
        raise SweepError(f"parameters.{self.name}: a grid search takes only {', '.join(GRID_KINDS)} parameters, "
                         f"not {self.kind}")

    def _continuous(self, kind: str, u: float) -> float:
        """The unquantized value at quantile ``u`` (``*_values`` bounds are values, the others exponents)."""
        low, high = self.config.get("min", 0.0), self.config.get("max", 1.0)
        if kind.endswith("_values"):
            low, high = math.log(low), math.log(high)
        if kind == "uniform":
            return low + u * (high - low)
        if kind in ("log_uniform", "log_uniform_values", "inv_log_uniform_values"):
            return math.exp(low + u * (high - low))  # (W&B's inv_log_uniform_values reduces to this)
        if kind == "inv_log_uniform":
            return math.exp(-(low + (1 - u) * (high - low)))
        z = statistics.NormalDist().inv_cdf(min(max(u, 1e-12), 1 - 1e-12))
        value = self.config.get("mu", 0.0) + self.config.get("sigma", 1.0) * z
        return math.exp(value) if kind == "log_normal" else value

    def ppf(self, u: float) -> Any:
        """The value at quantile ``u`` of the distribution (W&B samples ``ppf(uniform(0, 1))``)."""
        c, kind = self.config, self.kind
        if kind == "constant":
            return c["value"]
        if kind == "categorical":
            return c["values"][max(math.ceil(u * len(c["values"])) - 1, 0)]
        if kind == "categorical_w_probabilities":
            cumulative = np.cumsum(c["probabilities"])
            return c["values"][int(np.argmax(cumulative > u)) if u < cumulative[-1] else -1]
        if kind == "int_uniform":
            return c["min"] + max(math.ceil(u * (c["max"] - c["min"] + 1)) - 1, 0)
        value = self._continuous(kind.removeprefix("q_"), u)
        if kind.startswith("q_"):
            q = c.get("q", 1.0)
            value = round(value / q) * q
            return int(value) if isinstance(q, int) else value
        return value


@dataclass(frozen=True)
class SweepSpec:
    """A sweep file: how to search (``grid``/``random``), what to optimise, over what, and the command to run."""

    path: Path
    method: str
    metric: dict[str, str]
    parameters: tuple[Parameter, ...]
    command: tuple[str, ...]
    program: str | None
    run_cap: int | None
    name: str

    @property
    def searched(self) -> list[Parameter]:
        """The parameters that vary (constants are passed along but not searched)."""
        return [p for p in self.parameters if p.kind != "constant"]


def flatten(parameters: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[Parameter]:
    """Parameters in W&B's order: sorted by key at each level, nested ``parameters:`` blocks in place."""
    found: list[Parameter] = []
    for key, config in sorted(parameters.items()):
        path = (*prefix, str(key))
        if not isinstance(config, dict):
            raise SweepError(f"parameters.{NESTING.join(path)} must be a mapping (value:, values:, min:/max:, ...)")
        if "parameters" in config and set(config) <= {"parameters"}:
            found += flatten(config["parameters"], path)
        else:
            found.append(Parameter.parse(path, config))
    return found


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a W&B sweep file; errors name the file and key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise SweepError(f"sweep file '{path}' cannot be read: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise SweepError(f"sweep file '{path}' is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise SweepError(f"sweep file '{path}' must be a mapping with method, metric, parameters")
    if "early_terminate" in raw:
        raise SweepError(f"{path}: early_terminate (W&B's hyperband) is not run offline: every run would go to its "
                         "end unnoticed; remove it, or run the file under W&B's agent (`wandb sweep` + `wandb agent`)")
    unknown = sorted(set(map(str, raw)) - set(KEYS))
    if unknown:
        raise SweepError(f"{path}: unknown key(s) {', '.join(unknown)} (a sweep file has {', '.join(KEYS)})")
    method = raw.get("method")
    if method not in ("grid", "random"):
        hint = " (Bayesian search runs under W&B's agent: `wandb sweep` + `wandb agent`)" if method == "bayes" else ""
        raise SweepError(f"{path}: method must be grid or random, got {method!r}{hint}")
    metric = raw.get("metric") or {}
    if not isinstance(metric, dict) or "name" not in metric or metric.get("goal", "minimize") not in ("minimize",
                                                                                                       "maximize"):
        raise SweepError(f"{path}: metric needs a name and a goal (minimize or maximize), got {metric!r}")
    if not isinstance(raw.get("parameters"), dict) or not raw["parameters"]:
        raise SweepError(f"{path}: parameters must map each swept option to its values or distribution")
    try:
        parameters = flatten(raw["parameters"])
    except SweepError as error:
        raise SweepError(f"{path}: {error}") from None
    command = raw.get("command", DEFAULT_COMMAND)
    if not isinstance(command, list) or not all(isinstance(part, str) for part in command):
        raise SweepError(f"{path}: command must be a list of strings")
    return SweepSpec(path, method, {"name": metric["name"], "goal": metric.get("goal", "minimize")},
                     tuple(parameters), tuple(command), raw.get("program"), raw.get("run_cap"),
                     str(raw.get("name") or path.stem))
