"""Changes to the configuration on disk: the listeners and the dropins' pins in identity.xml,
the truststore, the signing keys, and the initial access tokens of dynamic registration
(RFC 7591 §3)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from cryptography import x509
from lxml import etree

from tokensmith.admin.audit import Actor, OperationError, not_found, record
from tokensmith.config.settings import load_identity
from tokensmith.config.xml import MAX_CONFIG_BYTES, ConfigError, UnreadableFile, read_regular_file
from tokensmith.listeners.dropins import WheelInfo, scan_dropins
from tokensmith.models import Storage
from tokensmith.oauth.grants import token_hash
from tokensmith.security.signing import SigningKeys
from tokensmith.security.truststore import Truststore

__all__ = [
    "change_listener",
    "reorder_listeners",
    "pin_wheels",
    "unpin_wheel",
    "move_listener",
    "import_anchor",
    "remove_anchor",
    "rotate_signing_key",
    "retire_signing_key",
    "issue_initial_access_token",
]


def _read_identity(path: Path) -> etree._ElementTree:
    """identity.xml as a tree that keeps its comments, parsed as safely as the loader does."""
    try:
        data = read_regular_file(path, MAX_CONFIG_BYTES)
    except UnreadableFile as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_comments=False
    )
    return etree.ElementTree(etree.fromstring(data, parser))


def _write_identity(path: Path, tree: etree._ElementTree) -> None:
    """Write *tree* over identity.xml atomically, only if the result loads: a change the
    loader would refuse never reaches the file."""
    data = etree.tostring(tree, xml_declaration=True, encoding="UTF-8")
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".identity-", suffix=".xml")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data + b"\n")
            out.flush()
            os.fchmod(out.fileno(), os.stat(path).st_mode & 0o7777)
            os.fsync(out.fileno())
        try:
            load_identity(Path(temporary))
        except ConfigError as exc:
            raise OperationError(f"the change would make identity.xml invalid: {exc}", 400) from None
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


@contextlib.contextmanager
def _identity_locked(path: Path) -> Iterator[None]:
    """Hold the lock of identity.xml's read-modify-write for the block.

    Several requests (and workers: each serving process is one) may change listeners at
    once; each reads identity.xml, changes its copy and writes it back, so without the lock
    the last write drops the others' changes although each was answered 202. An inter-process
    lock (flock) on a file beside identity.xml serialises them, and each change is applied to
    the file as the previous one left it. The lock file is never the configuration itself,
    which ``_write_identity`` replaces by renaming.
    """
    lock = path.parent / f".{path.name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _entries(tree: etree._ElementTree) -> etree._Element:
    root = tree.getroot()
    listeners = root.find("EventListeners")
    if listeners is None:
        listeners = etree.SubElement(root, "EventListeners")
    return listeners


def _entry(listeners: etree._Element, family: str, name: str) -> etree._Element:
    for el in listeners.iterfind("EventListener"):
        if el.get("type") == family and el.get("name") == name:
            return el
    el = etree.SubElement(listeners, "EventListener", type=family, name=name)
    return el


def change_listener(
    identity: Path,
    store: Storage,
    family: str,
    name: str,
    actor: Actor,
    *,
    enabled: bool | None = None,
    order: int | None = None,
    known: Sequence[tuple[str, str]] = (),
) -> None:
    """Enable or disable a listener, or set its orderId, in identity.xml (comments kept)."""
    if known and (family, name) not in known:
        raise not_found(f"no listener {family}/{name} is loaded")
    if order is not None and not 0 <= order <= 2**31 - 1:
        raise OperationError("order must be a whole number from 0 to 2147483647")
    with _identity_locked(identity):
        tree = _read_identity(identity)
        el = _entry(_entries(tree), family, name)
        if enabled is not None:
            el.set("enable", "true" if enabled else "false")
        if order is not None:
            el.set("orderId", str(order))
        _write_identity(identity, tree)
    record(store, actor, "listener.change", f"{family}/{name}", enabled=enabled, order=order)


def reorder_listeners(
    identity: Path, store: Storage, order: Sequence[str], actor: Actor, known: Sequence[tuple[str, str]] = ()
) -> None:
    """Give the listeners *order* (``type/name``, first called first) orderIds 100, 110, ..."""
    pairs = []
    for item in order:
        family, _, name = item.partition("/")
        if not family or not name:
            raise OperationError(f"{item!r} is not type/name")
        if known and (family, name) not in known:
            raise not_found(f"no listener {item} is loaded")
        pairs.append((family, name))
    if len(set(pairs)) != len(pairs):
        raise OperationError("a listener is named twice")
    with _identity_locked(identity):
        tree = _read_identity(identity)
        listeners = _entries(tree)
        for index, (family, name) in enumerate(pairs):
            _entry(listeners, family, name).set("orderId", str(100 + 10 * index))
        _write_identity(identity, tree)
    record(store, actor, "listener.reorder", None, order=list(order))


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _digest(value: str) -> str:
    digest = value.strip().lower()
    if not _SHA256.fullmatch(digest):
        raise OperationError(f"{value!r} is not a SHA-256: 64 hexadecimal digits, as sha256sum prints")
    return digest


def _wheels(dropins: Path) -> list[WheelInfo]:
    try:
        return scan_dropins(dropins)
    except ConfigError as exc:
        raise OperationError(f"dropins/ cannot be checked: {exc}", 409, "conflict") from None


def _pins(identity: Path) -> frozenset[str] | None:
    """The pins identity.xml holds now (None: pinning is off)."""
    try:
        return load_identity(identity).allowed_wheels
    except ConfigError as exc:
        raise OperationError(f"identity.xml cannot be read: {exc}", 409, "conflict") from None


def _refused_after(wheels: Sequence[WheelInfo], allowed: set[str]) -> list[str]:
    return [info.path.name for info in wheels if info.sha256 not in allowed]


def pin_wheels(
    identity: Path, dropins: Path, store: Storage, digests: Sequence[str] | None, actor: Actor
) -> list[str]:
    """Pin *digests* (see ``_pin_wheels``) under identity.xml's lock."""
    with _identity_locked(identity):
        return _pin_wheels(identity, dropins, store, digests, actor)


def _pin_wheels(
    identity: Path, dropins: Path, store: Storage, digests: Sequence[str] | None, actor: Actor
) -> list[str]:
    """Pin *digests* (every wheel now in *dropins* when None, as ``plugins pin`` prints them)
    as ``<Dropins><AllowedWheel sha256 name>`` in identity.xml, comments kept; the digests
    newly pinned. A digest need not be a wheel that is there yet (pin before dropping in).

    Pinning turns on with the first pin, and then every wheel in dropins/ must be pinned or the
    whole directory is refused (``listeners/dropins``): a change that would leave one out is
    refused (409) naming it, before identity.xml is touched."""
    wheels = _wheels(dropins)
    wanted = [info.sha256 for info in wheels] if digests is None else [_digest(d) for d in digests]
    if not wanted:
        raise OperationError("name at least one SHA-256 to pin (dropins/ has no wheel)")
    current = _pins(identity)
    allowed = set(current or ()) | set(wanted)
    refused = _refused_after(wheels, allowed)
    if refused:
        raise OperationError(
            ("pinning is off: pinning turns it on, and" if current is None else "with pinning on,")
            + f" these wheels in dropins/ would be refused: {', '.join(refused)};"
            " pin them too (all at once), or remove them from dropins/",
            409,
            "conflict",
        )
    added = [digest for digest in dict.fromkeys(wanted) if current is None or digest not in current]
    if not added and current is not None:
        return []
    tree = _read_identity(identity)
    root = tree.getroot()
    pins = root.find("Dropins")
    if pins is None:
        pins = etree.SubElement(root, "Dropins")
        previous = pins.getprevious()
        if previous is not None:
            pins.tail, previous.tail = previous.tail, "\n    "
    names = {info.sha256: info.path.name for info in wheels}
    # The schema wants every AllowedWheel before any AllowedWheelsFile.
    files = pins.find("AllowedWheelsFile")
    for digest in added:
        el = etree.Element("AllowedWheel", sha256=digest)
        if digest in names:
            el.set("name", names[digest])
        if files is not None:
            files.addprevious(el)
        else:
            pins.append(el)
    etree.indent(pins, space="    ", level=1)
    _write_identity(identity, tree)
    for digest in added:
        record(store, actor, "dropins.pin", digest, wheel=names.get(digest))
    return added


def unpin_wheel(identity: Path, dropins: Path, store: Storage, digest: str, actor: Actor) -> None:
    """Remove the pin of *digest* (see ``_unpin_wheel``) under identity.xml's lock."""
    with _identity_locked(identity):
        _unpin_wheel(identity, dropins, store, digest, actor)


def _unpin_wheel(identity: Path, dropins: Path, store: Storage, digest: str, actor: Actor) -> None:
    """Remove the ``<AllowedWheel>`` of *digest* from identity.xml. Refused (409) while its
    wheel is in dropins/ (the directory would be refused as a whole: remove the wheel first)
    and for a pin that comes from an ``<AllowedWheelsFile>`` (edit that file). The last pin
    leaves pinning on, with nothing allowed: removing a pin never turns pinning off."""
    digest = _digest(digest)
    current = _pins(identity)
    if current is None or digest not in current:
        raise not_found(f"{digest} is not pinned")
    present = [info.path.name for info in _wheels(dropins) if info.sha256 == digest]
    if present:
        raise OperationError(
            f"{present[0]} in dropins/ is this wheel: unpinning it would have dropins/ refused;"
            " remove the wheel first",
            409,
            "conflict",
        )
    tree = _read_identity(identity)
    pins = tree.getroot().find("Dropins")
    found = (
        []
        if pins is None
        else [el for el in pins.iterfind("AllowedWheel") if el.get("sha256", "").lower() == digest]
    )
    if not found:
        raise OperationError(
            f"{digest} is pinned by an <AllowedWheelsFile>, not in identity.xml: edit that file",
            409,
            "conflict",
        )
    for el in found:
        pins.remove(el)
    etree.indent(pins, space="    ", level=1)
    _write_identity(identity, tree)
    record(store, actor, "dropins.unpin", digest)


def move_listener(
    identity: Path,
    store: Storage,
    family: str,
    name: str,
    direction: str,
    actor: Actor,
    loaded: Sequence[tuple[str, str, int]],
) -> bool:
    """Move listener *family*/*name* one place up (called earlier) or down among its family,
    from the order identity.xml gives now, not from the order a caller saw: two moves made at
    once are both applied. *loaded* is ``(type, name, orderId)`` of every loaded listener;
    the orderId counts for a listener that identity.xml gives none. False when it is already
    first (up) or last (down); its family then gets orderIds 100, 110, ... as ``reorder_listeners``
    gives."""
    if direction not in ("up", "down"):
        raise OperationError("direction must be up or down")
    defaults = {(f, n): order for f, n, order in loaded if f == family}
    if (family, name) not in defaults:
        raise not_found(f"no listener {family}/{name} is loaded")
    with _identity_locked(identity):
        tree = _read_identity(identity)
        listeners = _entries(tree)
        current = dict(defaults)
        for el in listeners.iterfind("EventListener"):
            key = (el.get("type") or "", el.get("name") or "")
            order = el.get("orderId")
            if key in current and order is not None and order.strip().isdigit():
                current[key] = int(order)
        members = sorted(current, key=lambda key: (current[key], key[1]))
        index = members.index((family, name))
        other = index - 1 if direction == "up" else index + 1
        if not 0 <= other < len(members):
            return False
        members[index], members[other] = members[other], members[index]
        for position, (f, n) in enumerate(members):
            _entry(listeners, f, n).set("orderId", str(100 + 10 * position))
        _write_identity(identity, tree)
    record(
        store,
        actor,
        "listener.reorder",
        f"{family}/{name}",
        direction=direction,
        order=[f"{f}/{n}" for f, n in members],
    )
    return True


def import_anchor(
    truststore: Truststore,
    store: Storage,
    alias: str,
    pem: bytes,
    actor: Actor,
    *,
    allow_non_ca: bool = False,
) -> x509.Certificate:
    """Trust a CA certificate for tls_client_auth (and the admin MutualSSLAuthenticator)."""
    cert = truststore.import_(alias, pem, allow_non_ca=allow_non_ca)
    record(store, actor, "truststore.import", alias, subject=cert.subject.rfc4514_string())
    return cert


def remove_anchor(truststore: Truststore, store: Storage, alias: str, actor: Actor) -> None:
    if not truststore.remove(alias):
        raise not_found(f"no truststore alias {alias!r}")
    record(store, actor, "truststore.remove", alias)


def rotate_signing_key(keys: SigningKeys, store: Storage, algorithm: str, actor: Actor) -> str:
    key = keys.rotate(algorithm)
    record(store, actor, "signing.rotate", key.kid, alg=key.alg)
    return key.kid


def retire_signing_key(keys: SigningKeys, store: Storage, kid: str, actor: Actor) -> None:
    if kid not in {key.kid for key in keys.all()}:
        raise not_found(f"no signing key with kid {kid!r}")
    keys.retire(kid)
    record(store, actor, "signing.retire", kid)


def issue_initial_access_token(store: Storage, lifetime: int, actor: Actor) -> tuple[str, int]:
    """A new RFC 7591 §3 initial access token (stored hashed), and when it expires."""
    value = secrets.token_urlsafe(32)
    expires_at = int(time.time()) + lifetime
    store.add_registration_token(token_hash(value), "initial", None, expires_at)
    record(
        store,
        actor,
        "registration.initial_access_token",
        hashlib.sha256(token_hash(value).encode()).hexdigest()[:16],
        expires_at=expires_at,
    )
    return value, expires_at
