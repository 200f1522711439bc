"""A directory of PEM files, parsed once and re-read only when one of them changed.

The signing keyring and the truststore are both such a directory, written by the CLI in
another process while a server reads it on every request that needs it. Every read looks at
the directory with one ``scandir`` and compares each candidate file's name, inode, size and
mtime with what was parsed last; only then are files read again, and a file whose stat did
not change is not parsed again. Stat results are compared per file, not the directory's
mtime, which a filesystem with coarse timestamps would leave unchanged across two quick
changes. A file that cannot be read or parsed is skipped with a logged warning, so that one
stray file cannot take the others down.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Generic, TypeVar

__all__ = ["PemDirectory", "Stamp"]

T = TypeVar("T")
#: (name, inode, size, mtime in ns) of one file.
FileStamp = tuple[str, int, int, int]
#: The stamps of every candidate file, by name: changes whenever any of them does.
Stamp = tuple[FileStamp, ...]


def _reason(path: Path, exc: Exception) -> str:
    return f"{path}: {getattr(exc, 'strerror', None) or exc}"


class PemDirectory(Generic[T]):
    """The files of *directory* that *accept* takes, each turned into a ``T`` by *parse*.

    *parse* gets a file's path and raises ``OSError`` or ``ValueError`` for a file to skip;
    *describe* puts such a failure into the words *log* records after "*label*: skipping".
    """

    def __init__(
        self,
        directory: Path,
        *,
        label: str,
        accept: Callable[[os.DirEntry[str]], bool],
        parse: Callable[[Path], T],
        describe: Callable[[Path, Exception], str] = _reason,
        log: logging.Logger,
    ) -> None:
        self.directory = Path(directory)
        self._label = label
        self._accept = accept
        self._parse = parse
        self._describe = describe
        self._log = log
        # (stamp, items) as one tuple, replaced whole, so readers never see a torn pair.
        self._cache: tuple[Stamp, tuple[tuple[str, T], ...]] | None = None
        self._parsed: dict[FileStamp, T] = {}

    def stamp(self) -> Stamp:
        """The stamps of the candidate files now, sorted by name; () without the directory."""
        found = []
        try:
            with os.scandir(self.directory) as entries:
                for item in entries:
                    if not self._accept(item):
                        continue
                    with suppress(FileNotFoundError):  # removed while we looked
                        st = item.stat()
                        found.append((item.name, st.st_ino, st.st_size, st.st_mtime_ns))
        except (FileNotFoundError, NotADirectoryError):
            return ()
        return tuple(sorted(found))

    def items(self) -> tuple[tuple[str, T], ...]:
        """(file name, parsed value) of every usable file, by name, as of now."""
        stamp = self.stamp()
        cached = self._cache
        if cached is not None and cached[0] == stamp:
            return cached[1]
        parsed: dict[FileStamp, T] = {}
        for entry in stamp:
            path = self.directory / entry[0]
            try:
                # an unchanged file is not parsed again (RSA key checks take milliseconds)
                parsed[entry] = self._parsed[entry] if entry in self._parsed else self._parse(path)
            except FileNotFoundError:
                continue  # removed since the scandir; the next stamp will differ
            except (OSError, ValueError) as exc:
                self._log.warning("%s: skipping %s", self._label, self._describe(path, exc))
        # Read after stat: the contents are at least as new as the stamp, and any later change
        # alters the stamp and forces another read.
        self._parsed = parsed
        items = tuple((entry[0], value) for entry, value in parsed.items())
        self._cache = (stamp, items)
        return items

    def forget(self) -> None:
        """Drop what was read, after this process changed the directory itself."""
        self._cache = None
