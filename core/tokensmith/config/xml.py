"""Safe reading of the XML configuration files.

Configuration is parsed with entity resolution, DTD loading and network access off, and a
document that declares a DOCTYPE at all is refused: nothing in our files needs one, and
refusing it closes XXE and entity-expansion ("billion laughs") attacks outright.
Every error names the file and the line.
"""

from __future__ import annotations

import functools
import os
import re
import stat
from importlib import resources
from pathlib import Path
from typing import Any

from lxml import etree

__all__ = [
    "ConfigError",
    "UnreadableFile",
    "read_regular_file",
    "parse_xml",
    "attr_int",
    "attr_bool",
    "where",
    "MAX_CONFIG_BYTES",
]

#: The largest configuration file (server.xml, identity.xml, a pin file) that is read. Real
#: files are a few KiB; the cap keeps a runaway or hostile file from holding memory while
#: it serves.
MAX_CONFIG_BYTES = 1024 * 1024


class ConfigError(Exception):
    """A configuration file is missing or wrong; the message names the file and the line."""


class UnreadableFile(Exception):
    """A file could not be read as a regular file within its size cap; args[0] says why."""


def read_regular_file(path: Path, limit: int, digest: Any = None) -> bytes:
    """The bytes of the regular file *path*, at most *limit* of them, or ``UnreadableFile``.

    The file is opened without blocking and checked with fstat on the open descriptor, so a
    FIFO, a device or a directory is refused at once instead of hanging the reader (and with
    it every later reload and the signal handling of a supervisor). It is read in chunks,
    fed to *digest* as it comes, and refused as soon as it passes *limit*.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise UnreadableFile(exc.strerror or str(exc)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableFile("not a regular file")
        if info.st_size > limit:
            raise UnreadableFile(f"larger than {limit} bytes")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb", buffering=0) as file:
        chunks, total = [], 0
        try:
            while chunk := file.read(1024 * 1024):
                total += len(chunk)
                if total > limit:
                    raise UnreadableFile(f"larger than {limit} bytes")
                if digest is not None:
                    digest.update(chunk)
                chunks.append(chunk)
        except OSError as exc:
            raise UnreadableFile(exc.strerror or str(exc)) from None
    return b"".join(chunks)


def where(path: Path, element: etree._Element | None = None) -> str:
    line = element.sourceline if element is not None and element.sourceline else 1
    return f"{path}:{line}"


@functools.cache
def _schema(name: str) -> etree.XMLSchema:
    text = resources.files("tokensmith.config").joinpath(name).read_bytes()
    return etree.XMLSchema(etree.fromstring(text, etree.XMLParser(resolve_entities=False, no_network=True)))


def parse_xml(path: Path, schema: str | None = None) -> etree._Element:
    """Parse *path* safely and return its root element, or raise ``ConfigError``.

    With *schema* (a file name in this package, e.g. ``identity.xsd``) the document must also
    be valid against it; the first violation is reported with its line.
    """
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )
    try:
        data = read_regular_file(path, MAX_CONFIG_BYTES)
    except UnreadableFile as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        root = etree.fromstring(data, parser, base_url=str(path))
    except etree.XMLSyntaxError as exc:
        raise ConfigError(f"{path}:{exc.lineno or 1}: not well-formed XML: {exc.msg}") from None
    if root.getroottree().docinfo.doctype:
        raise ConfigError(f"{path}:1: DOCTYPE declarations are not allowed (DTDs and entities are refused)")
    if schema is not None:
        validator = _schema(schema)
        if not validator.validate(root):
            error = validator.error_log[0]
            raise ConfigError(f"{path}:{error.line or 1}: {explain(schema, error.message, error.path or '')}")
    return root


_XS = "{http://www.w3.org/2001/XMLSchema}"


@functools.cache
def _schema_document(name: str) -> etree._Element:
    text = resources.files("tokensmith.config").joinpath(name).read_bytes()
    return etree.fromstring(text, etree.XMLParser(resolve_entities=False, no_network=True))


def _owner(node: etree._Element) -> etree._Element | None:
    """The element declaration *node* (an attribute or element declaration) belongs to."""
    parent = node.getparent()
    while parent is not None and parent.tag != f"{_XS}element":
        parent = parent.getparent()
    return parent


def _declaration(schema: str, path: str) -> etree._Element | None:
    """The schema's declaration of the element at *path* (``/Server/Connector[2]``)."""
    declaration: etree._Element | None = _schema_document(schema)
    for step in path.strip("/").split("/"):
        name = step.split("[", 1)[0]
        assert declaration is not None
        declaration = next(
            (d for d in declaration.iter(f"{_XS}element") if d.get("name") == name and d is not declaration),
            None,
        )
        if declaration is None:
            return None
    return declaration


def _parts(declaration: etree._Element, kind: str) -> list[etree._Element]:
    """The attribute or child element declarations of *declaration* itself."""
    return [d for d in declaration.iter(f"{_XS}{kind}") if d is not declaration and _owner(d) is declaration]


def _value_words(schema: str, declaration: etree._Element) -> str | None:
    """The documentation of a declaration's simple type: what its value may be, in words."""
    simple = declaration.find(f"{_XS}simpleType")
    type_name = declaration.get("type", "")
    if simple is None and type_name and not type_name.startswith("xs:"):
        simple = next(
            (t for t in _schema_document(schema).iter(f"{_XS}simpleType") if t.get("name") == type_name), None
        )
    text = simple.findtext(f"{_XS}annotation/{_XS}documentation") if simple is not None else None
    return " ".join(text.split()) if text else None


def explain(schema: str, message: str, path: str) -> str:
    """*message*, a schema validator's, with what is allowed said in words.

    The schema files are not where a user can see them, so the message names the allowed
    attributes, child elements or value instead of pointing at the schema.
    """
    message = re.sub(r"\[facet '\w+'\] ", "", message)
    named = re.match(r"Element '([^']+)'(?:, attribute '([^']+)')?", message)
    declaration = _declaration(schema, path)
    element, attribute = (named.group(1), named.group(2)) if named else (None, None)
    if ("is not accepted by the pattern" in message or "atomic type" in message) and declaration is not None:
        target = declaration
        if attribute is not None:
            target = next(
                (a for a in _parts(declaration, "attribute") if a.get("name") == attribute), declaration
            )
        words = _value_words(schema, target)
        if words:
            message = re.sub(
                r" is not (accepted by the pattern |a valid value of the (local )?atomic type).*$",
                f" is not {words}.",
                message,
            )
    elif "is not allowed" in message and attribute is not None and declaration is not None:
        names = [a.get("name", "") for a in _parts(declaration, "attribute")]
        message += (
            f" <{element}> takes {', '.join(names)}." if names else f" <{element}> takes no attributes."
        )
    elif "is not expected" in message and "Expected is" not in message:
        parent_path = path.rstrip("/").rsplit("/", 1)[0]
        parent = _declaration(schema, parent_path) if parent_path else None
        if parent is not None:
            children = [f"<{c.get('name')}>" for c in _parts(parent, "element")]
            message += f" <{parent.get('name')}> may contain {', '.join(children)}."
    return message


def attr_int(
    path: Path,
    element: etree._Element,
    name: str,
    default: int | None,
    *,
    minimum: int = 0,
    maximum: int = 2**31 - 1,
) -> int | None:
    """The integer attribute *name* of *element*, or *default* when it is absent."""
    raw = element.get(name)
    if raw is None:
        return default
    try:
        value = int(raw.strip(), 10)
    except ValueError:
        raise ConfigError(
            f"{where(path, element)}: {name}={raw!r} on <{element.tag}> is not a whole number"
        ) from None
    if not minimum <= value <= maximum:
        raise ConfigError(
            f"{where(path, element)}: {name}={value} on <{element.tag}> is outside {minimum}..{maximum}"
        )
    return value


def attr_bool(path: Path, element: etree._Element, name: str, default: bool) -> bool:
    """The boolean attribute *name* ("true"/"false") of *element*, or *default*."""
    raw = element.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value not in ("true", "false"):
        raise ConfigError(f"{where(path, element)}: {name}={raw!r} on <{element.tag}> must be true or false")
    return value == "true"
