"""How the ``fedlit`` command fails: one line naming the problem, and an exit status that says what kind."""

from __future__ import annotations

import contextlib
import io
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import yaml
from jsonargparse import ArgumentParser, Namespace

from fedlit.server.interrupts import NothingTrained, RunInterrupted
from fedlit.server.run_dir import OutputDirError

# Exit statuses: 0 the run trained what it was asked to; 1 an error, named in one line; 2 a command-line or
# config error found while parsing; 3 nothing trained (every round skipped); 128 + signal number when
# interrupted (130 SIGINT, 143 SIGTERM); ``fedlit verify``: 0 every key verified, 4 some key not.
EXIT_ERROR, EXIT_PARSE, EXIT_NOTHING_TRAINED, EXIT_NOT_VERIFIED = 1, 2, 3, 4


def _raised_by_jsonargparse(error: BaseException) -> bool:
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and "jsonargparse" in frame.tb_frame.f_code.co_filename


def error_line(error: BaseException) -> str:
    """One line naming the problem, without the wrapping jsonargparse adds around errors raised while it
    instantiates a config (and the ``Given value`` dump it appends)."""
    while error.__cause__ is not None and _raised_by_jsonargparse(error):
        error = error.__cause__
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    text = text.split("\nGiven value")[0].strip()
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(error).__name__


def failure(error: BaseException, debug: bool = False) -> tuple[int, str]:
    """The exit status and the one line (without the ``fedlit:`` prefix) for a run that failed with ``error``:
    ``fedlit fit`` prints and exits with them, and a Flower deployment's ServerApp hands them to ``fedlit deploy``,
    which does the same."""
    if isinstance(error, RunInterrupted):
        return 128 + error.signum, str(error)
    if isinstance(error, NothingTrained):
        return EXIT_NOTHING_TRAINED, f"nothing was trained: {error}"
    if isinstance(error, ParseError):
        return EXIT_PARSE, str(error)
    named = isinstance(error, (ValueError, KeyError, OSError, ImportError, OutputDirError))  # bad input, named
    hint = "" if debug or named else " (--debug shows the traceback)"
    return EXIT_ERROR, f"{error_line(error)}{hint}"


def fail(error: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exception(error)
    status, line = failure(error, debug)
    print(f"fedlit: {line}", file=sys.stderr)
    sys.exit(status)


def check_config_files(argv: Sequence[str]) -> None:
    """jsonargparse reports YAML syntax errors without the file name and over several lines: name the file, the
    line and the problem in one line, exit 2 (a config error), for ``--config FILE`` and ``--config=FILE`` alike."""
    given = [value for flag, value in zip(argv, argv[1:], strict=False) if flag == "--config"]
    given += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]
    for value in given:
        if not Path(value).is_file():
            continue
        try:
            yaml.safe_load(Path(value).read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or type(err).__name__
            print(f"fedlit: config file '{value}' is not valid YAML: {problem}{where}", file=sys.stderr)
            sys.exit(EXIT_PARSE)


# lines of jsonargparse's errors that say nothing about the problem itself
_NOISE = ("Given value", "Subtypes:", "Errors:", "Does not validate against any", "Expected a <class 'NoneType'>",
          "tip:", "usage:")


def parse_error_line(text: str) -> str:
    """jsonargparse's usage dump and nested error, as one line: the keys down to the innermost problem."""
    message = text.split("error: ", 1)[1] if "error: " in text else text
    kept = [line.strip().removeprefix("- ") for line in message.splitlines() if line.strip()]
    return " ".join(line for line in kept if not line.startswith(_NOISE))


class ParseError(ValueError):
    """A command line or config jsonargparse refused, as one line."""


def parse_quietly(parser: ArgumentParser, argv: list[str] | None = None, data: dict | None = None) -> Namespace:
    """``parser.parse_args(argv)`` (or ``parser.parse_object(data)``), with a refusal raised as one-line
    :class:`ParseError` instead of the usage dump; ``--help`` and ``--print_config`` print as usual."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return parser.parse_object(data) if data is not None else parser.parse_args(argv)
    except SystemExit as done:
        if done.code in (0, None):
            sys.stderr.write(captured.getvalue())
            raise
        raise ParseError(parse_error_line(captured.getvalue())) from None


def parse_args(parser: ArgumentParser, argv: list[str]) -> Namespace:
    """:func:`parse_quietly`, a refusal printed as ``fedlit: ...`` with exit 2."""
    try:
        return parse_quietly(parser, argv)
    except ParseError as error:
        print(f"fedlit: {error}", file=sys.stderr)
        sys.exit(EXIT_PARSE)
