"""A sweep run's command line, built from the sweep file's ``command`` as W&B's agent builds it."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from fedlit.sweep.spec import Parameter

ENV_MACRO = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")


def agent_config(parameters: Sequence[Parameter], values: Mapping[str, Any]) -> dict[str, Any]:
    """The run's config as W&B gives it: a nested ``parameters:`` block becomes one dict-valued key."""
    config: dict[str, Any] = {}
    for parameter in parameters:
        *parents, leaf = parameter.path
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = values[parameter.name]
    return config


def macros(parameters: Sequence[Parameter], values: Mapping[str, Any], program: str | None) -> dict[str, list[str]]:
    """What each ``${...}`` in a sweep command expands to (W&B's agent: ``--key=value`` with Python's ``str`` of the
    value; the interpreter here is this one)."""
    config = agent_config(parameters, values)
    return {
        "env": ["/usr/bin/env"],
        "interpreter": [sys.executable],
        "program": [program] if program else [],
        "args": [f"--{key}={value}" for key, value in config.items()],
        "args_no_hyphens": [f"{key}={value}" for key, value in config.items()],
        "args_no_boolean_flags": [f"--{key}" if value is True else f"--{key}={value}" for key, value in config.items()
                                  if value is not False],
        "args_json": [json.dumps(config)],
    }


def expand_command(command: Sequence[str], parameters: Sequence[Parameter], values: Mapping[str, Any],
                   program: str | None) -> list[str]:
    """The command line for one run: whole-word macros expand to their lists, ``${envvar:NAME}`` to the variable."""
    expanded = macros(parameters, values, program)
    line: list[str] = []
    for part in command:
        part = ENV_MACRO.sub(lambda match: os.environ.get(match.group(1), match.group(1)), part)
        if part.startswith("${") and part.endswith("}") and part[2:-1] in expanded:
            line += expanded[part[2:-1]]
        else:
            line.append(part)
    return line
