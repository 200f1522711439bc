"""Files at rest: the database and the directories holding keys or data are private.

They are created 0600 (files) and 0700 (directories) whatever the umask: the database holds
users' password hashes, ``conf/security`` the server key and the signing keys. ``mkdir`` and
``open`` only ever remove bits from the mode asked for, so a umask of 000 would otherwise
leave nothing to fix, but a umask of 022 leaves a database readable by every local account;
the modes are therefore set explicitly. What exists already is left as the operator made it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["private_dir", "private_file"]


def private_dir(path: Path) -> None:
    """Create *path* and any missing parents, each 0700; an existing directory is kept."""
    missing = []
    current = path
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(directory, 0o700)


def private_file(path: Path) -> None:
    """Create *path* empty and 0600 unless it exists (its directory with ``private_dir``)."""
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
