"""Loading plugin wheels from ``dropins/``.

Each ``*.whl`` is checked before anything in it is imported. It must be a regular file of at
most ``MAX_WHEEL_BYTES``, read once and hashed as it is read; with pinning on, its SHA-256 is
checked before the archive is parsed at all (as pip's ``--require-hashes`` does). It must be
a well-formed wheel (PEP 427) for this interpreter, every file must be listed in its RECORD
with a matching SHA-256 and size, no path may leave the wheel's root, its top-level modules
must not shadow the standard library, tokensmith, an installed distribution or another
wheel, and its Requires-Dist must already be satisfied here (nothing is ever installed at
load time). A wheel that fails any check, or cannot be read for whatever reason, stops the
load with one line naming the file (``WheelError``, never another exception): a security
component must not start with part of its authenticators silently missing, and a reload
must be refused, not crash. Accepted wheels are unpacked, without any bytecode they ship,
into a private directory that is put on ``sys.path``, so that wheels with compiled modules
work too.
"""

from __future__ import annotations

import configparser
import csv
import functools
import hashlib
import importlib
import importlib.metadata
import io
import re
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path, PurePosixPath
from types import ModuleType

from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import parse_tag, sys_tags
from packaging.utils import canonicalize_name

from tokensmith.config.xml import ConfigError, UnreadableFile, read_regular_file
from tokensmith.security.jose import b64url_encode

__all__ = [
    "PluginSource",
    "WheelInfo",
    "WheelError",
    "DropinLoader",
    "check_wheel",
    "scan_dropins",
    "ENTRY_POINT_GROUP",
]

ENTRY_POINT_GROUP = "tokensmith"
_WHEEL_NAME = re.compile(
    r"^(?P<dist>[A-Za-z0-9_.]+)-(?P<version>[^-]+)(-(?P<build>\d[^-]*))?"
    r"-(?P<tag>[^-]+-[^-]+-[^-]+)\.whl$"
)
_MAX_MEMBERS = 10_000
_MAX_UNPACKED = 256 * 1024 * 1024
#: The largest wheel file read at all. It is read into memory once (the checked copy is what
#: gets unpacked), so this bounds what one file in dropins/ can cost.
MAX_WHEEL_BYTES = 64 * 1024 * 1024
_MAX_METADATA = 4 * 1024 * 1024  # WHEEL, METADATA, RECORD, entry_points.txt
_MAX_NAME_PART = 255  # NAME_MAX: a longer member could not be unpacked
_MAX_NAME = 1024
_COMPRESSION = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})


class WheelError(ConfigError):
    """A dropped-in wheel was refused; the message names the file and the reason."""


@dataclass(frozen=True)
class WheelInfo:
    path: Path
    distribution: str
    version: str
    sha256: str
    entry_points: dict[str, str]  # entry-point name -> "module[:attr]"
    data: bytes = field(repr=False, default=b"")  # the checked bytes: unpack these, not the file
    top_level: frozenset[str] = frozenset()  # the importable names it provides


@dataclass(frozen=True)
class PluginSource:
    """One entry point of the ``tokensmith`` group, from one checked wheel."""

    name: str
    module: ModuleType | object
    wheel: Path
    distribution: str
    version: str
    sha256: str


def _refuse(path: Path, reason: str) -> WheelError:
    return WheelError(f"{path}: refused: {reason}")


def _record_digest(data: bytes) -> str:
    return "sha256=" + b64url_encode(hashlib.sha256(data).digest())


def _central_directory_entries(path: Path, raw: bytes) -> int:
    """The entry count the end-of-central-directory record declares, read before zipfile
    builds an object per entry (a small file can declare millions of them)."""
    at = raw.rfind(b"PK\x05\x06", max(0, len(raw) - 22 - 65535))
    if at < 0 or len(raw) < at + 22:
        raise _refuse(path, "not a zip archive")
    return int.from_bytes(raw[at + 10 : at + 12], "little")


def _read_wheel(path: Path, allowed: frozenset[str] | None) -> tuple[bytes, str]:
    """The wheel's bytes and SHA-256, read once, hashed as they stream in, capped in size.

    With pinning on, the hash is checked here, before a byte of the archive is parsed.
    """
    digest = hashlib.sha256()
    try:
        raw = read_regular_file(path, MAX_WHEEL_BYTES, digest)
    except UnreadableFile as exc:
        raise _refuse(path, str(exc)) from None
    sha256 = digest.hexdigest()
    if allowed is not None and sha256 not in allowed:
        raise WheelError(f"{path}: refused: sha256 {sha256} is not pinned in identity.xml <Dropins>")
    return raw, sha256


def check_wheel(path: Path, allowed: frozenset[str] | None = None) -> WheelInfo:
    """Check the wheel at *path* as the module docstring says; raise ``WheelError``.

    With *allowed* (pinning on), a wheel whose SHA-256 is not in it is refused before it is
    parsed. Whatever goes wrong while reading the file, the result is a ``WheelError`` naming
    it: nothing in dropins/ can raise anything else.
    """
    match = _WHEEL_NAME.match(path.name)
    if not match:
        raise _refuse(path, "the file name is not a wheel name (PEP 427)")
    if not any(tag in set(sys_tags()) for tag in parse_tag(match["tag"])):
        raise _refuse(path, f"built for {match['tag']}, which this Python cannot load")
    raw, sha256 = _read_wheel(path, allowed)
    try:
        return _check_archive(path, match, raw, sha256)
    except WheelError:
        raise
    except Exception as exc:  # a zipfile or codec error we did not foresee is still a refusal
        raise _refuse(path, f"unreadable archive: {type(exc).__name__}: {exc}") from None


def _check_archive(path: Path, match: re.Match[str], raw: bytes, sha256: str) -> WheelInfo:
    if _central_directory_entries(path, raw) > _MAX_MEMBERS:
        raise _refuse(path, "too large")
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError):
        raise _refuse(path, "not a zip archive") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) > _MAX_MEMBERS or sum(m.file_size for m in members) > _MAX_UNPACKED:
            raise _refuse(path, "too large")
        for member in members:
            if member.flag_bits & 0x1:
                raise _refuse(path, f"{member.filename!r} is encrypted")
            if member.compress_type not in _COMPRESSION:
                raise _refuse(
                    path,
                    f"{member.filename!r} uses compression method {member.compress_type}; wheels use deflate",
                )
        names = [m.filename for m in members]
        if len(set(names)) != len(names):
            raise _refuse(path, "a member name appears twice")
        for name in names:
            pure = PurePosixPath(name)
            if pure.is_absolute() or ".." in pure.parts or "\\" in name or "\0" in name:
                raise _refuse(path, f"unsafe path {name[:80]!r}")
            if len(name.encode()) > _MAX_NAME or any(
                len(part.encode()) > _MAX_NAME_PART for part in pure.parts
            ):
                raise _refuse(path, f"member name too long: {name[:80]!r}...")
        dist_infos = {n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info")}
        if len(dist_infos) != 1:
            raise _refuse(path, "needs exactly one .dist-info directory")
        dist_info = dist_infos.pop()
        if canonicalize_name(dist_info[: -len(".dist-info")].rsplit("-", 1)[0]) != canonicalize_name(
            match["dist"]
        ):
            raise _refuse(path, f"{dist_info} does not match the file name")

        def read(member: str, limit: int = _MAX_METADATA) -> bytes:
            try:
                info = archive.getinfo(member)
            except KeyError:
                raise _refuse(path, f"{member} is missing") from None
            if info.file_size > limit:
                raise _refuse(path, f"{member} is too large")
            try:
                return archive.read(info)
            except zipfile.BadZipFile as exc:  # a bad CRC: corrupt, or a size that lies
                raise _refuse(path, f"{member}: {exc}") from None

        wheel_meta = HeaderParser().parsestr(read(f"{dist_info}/WHEEL").decode("utf-8", "replace"))
        if not (wheel_meta.get("Wheel-Version") or "").startswith("1."):
            raise _refuse(path, "unsupported Wheel-Version")

        record_name = f"{dist_info}/RECORD"
        listed: dict[str, tuple[str, str]] = {}
        try:
            for row in csv.reader(io.StringIO(read(record_name).decode("utf-8"))):
                if row:
                    listed[row[0]] = (row[1], row[2]) if len(row) >= 3 else ("", "")
                    if len(listed) > _MAX_MEMBERS:
                        raise _refuse(path, "RECORD lists too many files")
        except (UnicodeDecodeError, csv.Error):
            raise _refuse(path, "RECORD is not readable") from None
        for name in names:
            if name == record_name or name.startswith(f"{dist_info}/RECORD."):
                continue
            if name not in listed:
                raise _refuse(path, f"{name} is not listed in RECORD")
            digest, size = listed[name]
            data = read(name, _MAX_UNPACKED)
            if not digest.startswith("sha256="):
                raise _refuse(path, f"RECORD has no sha256 for {name}")
            if digest != _record_digest(data) or (size and size != str(len(data))):
                raise _refuse(path, f"{name} does not match its RECORD hash")
        for name in listed:
            if name != record_name and name not in names:
                raise _refuse(path, f"{name} is listed in RECORD but missing")

        metadata = HeaderParser().parsestr(read(f"{dist_info}/METADATA").decode("utf-8", "replace"))
        for requirement in metadata.get_all("Requires-Dist") or []:
            _check_requirement(path, requirement)

        entry_points: dict[str, str] = {}
        ep_file = f"{dist_info}/entry_points.txt"
        if ep_file in names:
            parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
            parser.optionxform = str  # type: ignore[assignment,method-assign]
            try:
                parser.read_string(read(ep_file).decode("utf-8"))
            except (configparser.Error, UnicodeDecodeError):
                raise _refuse(path, "entry_points.txt is not readable") from None
            if parser.has_section(ENTRY_POINT_GROUP):
                entry_points = dict(parser.items(ENTRY_POINT_GROUP))
        by_target: dict[str, str] = {}
        for name, value in entry_points.items():
            target = value.replace(" ", "")
            if target in by_target:
                raise _refuse(
                    path,
                    f"entry points {by_target[target]!r} and {name!r} both name"
                    f" {value}; one object can be one plugin only",
                )
            by_target[target] = name
    return WheelInfo(
        path=path,
        distribution=metadata.get("Name", match["dist"]),
        version=metadata.get("Version", match["version"]),
        sha256=sha256,
        entry_points=entry_points,
        data=raw,
        top_level=_top_level(names),
    )


def _top_level(names: list[str]) -> frozenset[str]:
    result = set()
    for member in names:
        first = member.split("/", 1)[0]
        if first.endswith((".dist-info", ".data")) or first == "__pycache__":
            continue
        result.add(first.split(".", 1)[0])
    return frozenset(result)


def _is_bytecode(name: str) -> bool:
    """Shipped bytecode is never unpacked: Python would run a ``.pyc`` (an unchecked-hash one,
    PEP 552, or a sourceless module) instead of the source that was reviewed and pinned."""
    return name.endswith((".pyc", ".pyo")) or "__pycache__" in PurePosixPath(name).parts


@functools.cache
def _installed_top_level() -> frozenset[str]:
    """Top-level names that the interpreter or an installed distribution already provides."""
    names = set(sys.stdlib_module_names) | set(sys.builtin_module_names) | {"tokensmith"}
    names.update(importlib.metadata.packages_distributions())
    return frozenset(names)


def _check_shadowing(wheels: list[WheelInfo]) -> None:
    """Refuse a wheel whose modules would take the place of other code.

    Wheels are unpacked to the front of ``sys.path``: a ``secrets.py`` in one would be what
    the next ``import secrets`` in the server runs.
    """
    taken = _installed_top_level()
    owners: dict[str, Path] = {}
    for info in wheels:
        for name in sorted(info.top_level):
            if name in taken:
                raise _refuse(
                    info.path,
                    f"its top-level module {name!r} would shadow the"
                    " standard library, tokensmith or an installed"
                    " distribution",
                )
            if name in owners:
                raise _refuse(
                    info.path, f"its top-level module {name!r} is also provided by {owners[name].name}"
                )
            owners[name] = info.path


def _check_requirement(path: Path, text: str) -> None:
    try:
        requirement = Requirement(text)
    except InvalidRequirement:
        raise _refuse(path, f"invalid Requires-Dist {text!r}") from None
    if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
        return
    try:
        installed = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
        raise _refuse(path, f"requires {text}, which is not installed") from None
    if not requirement.specifier.contains(installed, prereleases=True):
        raise _refuse(path, f"requires {text}, but {requirement.name} {installed} is installed")


def scan_dropins(directory: Path, allowed: frozenset[str] | None = None) -> list[WheelInfo]:
    """Check every wheel in *directory*; refuse two wheels that export the same plugin name.

    With *allowed* (pinning on), a wheel whose SHA-256 is not in it is refused.
    """
    if not directory.is_dir():
        raise ConfigError(f"{directory}: dropins directory not found")
    try:
        paths = sorted(directory.glob("*.whl"))
    except OSError as exc:
        raise ConfigError(f"{directory}: cannot list: {exc.strerror or exc}") from None
    wheels = [check_wheel(p, allowed) for p in paths]
    _check_shadowing(wheels)
    owners: dict[str, Path] = {}
    for info in wheels:
        for name in info.entry_points:
            if name in owners:
                raise WheelError(
                    f"{info.path}: refused: plugin name {name!r} is also exported by {owners[name].name}"
                )
            owners[name] = info.path
    return wheels


def top_level_names(info: WheelInfo) -> frozenset[str]:
    """The importable top-level names a wheel provides (modules, packages, extensions)."""
    return info.top_level


@dataclass
class _Loaded:
    target: Path
    names: frozenset[str]
    sources: list[PluginSource]


class DropinLoader:
    """Loads the wheels of one dropins/ directory, again on every reload.

    A wheel already loaded (same SHA-256) keeps its modules. A new or changed wheel is
    unpacked into its own directory under a private root; modules of an older wheel that
    provided the same top-level names are dropped from ``sys.modules`` first, so the new code
    is what gets imported. Listeners that still run old code keep their module objects until
    their requests finish.
    """

    def __init__(self, directory: Path, unpack_root: Path | None = None):
        self.directory = directory
        if unpack_root is not None:
            unpack_root.mkdir(mode=0o700, exist_ok=True)
        self.root = unpack_root or Path(tempfile.mkdtemp(prefix="tokensmith-dropins-"))
        self._loaded: dict[str, _Loaded] = {}

    def load(self, allowed: frozenset[str] | None = None) -> list[PluginSource]:
        """Check every wheel, then import the new ones; raise ``ConfigError`` on any refusal."""
        wheels = scan_dropins(self.directory, allowed)
        sources: list[PluginSource] = []
        for info in wheels:
            loaded = self._loaded.get(info.sha256) or self._import(info)
            self._loaded[info.sha256] = loaded
            sources.extend(loaded.sources)
        current = {info.sha256 for info in wheels}
        for sha in [sha for sha in self._loaded if sha not in current]:
            gone = self._loaded.pop(sha)
            if str(gone.target) in sys.path:
                sys.path.remove(str(gone.target))
        return sources

    def _import(self, info: WheelInfo) -> _Loaded:
        names = top_level_names(info)
        target = self.root / f"{canonicalize_name(info.distribution)}-{info.sha256[:16]}"
        if not target.exists():
            staging = Path(tempfile.mkdtemp(dir=self.root))
            try:
                with zipfile.ZipFile(io.BytesIO(info.data)) as archive:
                    for member in archive.infolist():
                        if not _is_bytecode(member.filename):
                            archive.extract(member, staging)
                staging.rename(target)
            except Exception as exc:  # the disk, not the wheel (that was checked): still one line
                shutil.rmtree(staging, ignore_errors=True)
                raise _refuse(
                    info.path, f"cannot unpack into {self.root}: {type(exc).__name__}: {exc}"
                ) from None
        for other in self._loaded.values():
            if other.names & names and str(other.target) in sys.path:
                sys.path.remove(str(other.target))
        for module_name in list(sys.modules):
            if module_name.split(".", 1)[0] in names:
                del sys.modules[module_name]
        sys.path.insert(0, str(target))
        importlib.invalidate_caches()
        sources = []
        for name, value in info.entry_points.items():
            module_name, _, attr = (part.strip() for part in value.partition(":"))
            try:
                module = importlib.import_module(module_name)
                for part in filter(None, attr.split(".")):
                    module = getattr(module, part)
            except BaseException as exc:  # noqa: B036 - SystemExit at import must not stop us
                raise WheelError(
                    f"{info.path}: plugin {name!r}: loading {value} failed: {type(exc).__name__}: {exc}"
                ) from None
            sources.append(
                PluginSource(name, module, info.path, info.distribution, info.version, info.sha256)
            )
        return _Loaded(target, names, sources)

    def close(self) -> None:
        """Remove the unpacked wheels."""
        shutil.rmtree(self.root, ignore_errors=True)
