"""Building plugin source trees into wheels for ``dropins/``.

Bundled plugins under ``plugins/`` are built by exactly this code, and so can a third
party's. A plugin is rebuilt only when its sources changed: a stamp next to the wheel records
the SHA-256 of the source tree it was built from. Builds run offline, without build
isolation, in a copy of the source tree so that no ``build/`` or ``*.egg-info`` litter is
left behind.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

__all__ = ["BuildError", "build_plugin", "source_digest"]

_IGNORE = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".*")


class BuildError(Exception):
    """A plugin could not be built; the message names the directory."""


def _files(root: Path) -> list[Path]:
    ignored = {"build", "dist", "__pycache__"}
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and not any(
            part in ignored or part.endswith(".egg-info") or part.startswith(".")
            for part in p.relative_to(root).parts
        )
        and p.suffix != ".pyc"
    )


def source_digest(root: Path) -> str:
    """SHA-256 over the relative paths and contents of the files a build reads."""
    digest = hashlib.sha256()
    for path in _files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def build_plugin(source: Path, out_dir: Path, *, force: bool = False) -> tuple[Path, bool]:
    """Build *source* into a wheel in *out_dir*; return the wheel and whether it was built."""
    source = source.resolve()
    if not (source / "pyproject.toml").is_file():
        raise BuildError(f"{source}: no pyproject.toml; a plugin is a Python project")
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = out_dir / f".{source.name}.source"
    digest = source_digest(source)
    if not force and stamp.is_file():
        recorded_digest, _, wheel_name = stamp.read_text().strip().partition(" ")
        if recorded_digest == digest and (out_dir / wheel_name).is_file():
            return out_dir / wheel_name, False
    with tempfile.TemporaryDirectory(prefix="tokensmith-build-") as tmp:
        copy = Path(tmp) / source.name
        shutil.copytree(source, copy, ignore=_IGNORE)
        wheel_dir = Path(tmp) / "wheels"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "--no-index",
                "--disable-pip-version-check",
                "-q",
                "-w",
                str(wheel_dir),
                str(copy),
            ],
            capture_output=True,
            text=True,
        )
        wheels = list(wheel_dir.glob("*.whl")) if wheel_dir.is_dir() else []
        if result.returncode != 0 or len(wheels) != 1:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise BuildError(f"{source}: build failed: {tail[0]}")
        built = wheels[0]
        name = canonicalize_name(parse_wheel_filename(built.name)[0])
        for old in out_dir.glob("*.whl"):
            try:
                if canonicalize_name(parse_wheel_filename(old.name)[0]) == name:
                    old.unlink()
            except ValueError:
                continue
        target = out_dir / built.name
        shutil.move(str(built), target)
    stamp.write_text(f"{digest} {target.name}\n")
    return target, True
