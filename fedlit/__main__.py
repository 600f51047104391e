"""``python -m fedlit``: the ``fedlit`` command (sweep files use it, so the interpreter that runs them is used)."""

from fedlit.cli import main

main()
