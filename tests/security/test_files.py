"""tokensmith.security.files: private directories and files are made private from the start."""

from __future__ import annotations

import stat
from pathlib import Path

from tokensmith.security.files import private_dir, private_file


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_dir_makes_each_missing_parent_0700(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c"
    private_dir(target)
    assert [mode(p) for p in (tmp_path / "a", tmp_path / "a" / "b", target)] == [0o700] * 3
    (tmp_path / "open").mkdir(mode=0o755)
    private_dir(tmp_path / "open")
    assert mode(tmp_path / "open") == 0o755


def test_private_file_is_created_0600_and_kept_if_it_exists(tmp_path: Path) -> None:
    target = tmp_path / "d" / "secret"
    private_file(target)
    assert mode(target) == 0o600 and mode(target.parent) == 0o700 and target.read_bytes() == b""
    target.write_bytes(b"kept")
    private_file(target)
    assert target.read_bytes() == b"kept"
