"""A client package (FedOST's emulator and tokenizer) over the wire: its files as one mapping, named by the
SHA-256 of their names and contents, so a party stores it once and checks that what arrived is what was sent."""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath

from fedlit.files import atomic_directory, cache_dir

Files = dict[str, bytes]  # relative path -> content


def package_files(directory: Path) -> Files:
    return {path.relative_to(directory).as_posix(): path.read_bytes()
            for path in sorted(Path(directory).rglob("*")) if path.is_file()}


def package_digest(files: Files) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + len(files[name]).to_bytes(8, "big") + files[name])
    return digest.hexdigest()


def package_dir(digest: str, cache: Path | None = None) -> Path:
    """Where a party keeps the package ``digest`` (under ``cache``, default fedlit's cache directory)."""
    if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
        raise ValueError(f"not a package digest: {digest[:80]!r}")
    return (cache or cache_dir()) / "packages" / digest


def store_package(files: Files, digest: str, cache: Path | None = None) -> Path:
    """Write ``files`` under their digest (atomically), after checking it and that every name stays inside."""
    if package_digest(files) != digest:
        raise ValueError("the client package does not match its digest (damaged or tampered in transit)")
    for name in files:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise ValueError(f"the client package names a file outside it: {name!r}")
    directory = package_dir(digest, cache)
    with atomic_directory(directory) as tmp:
        for name, content in files.items():
            target = Path(tmp, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    return directory
