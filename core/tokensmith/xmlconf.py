"""Safe reading of the XML configuration files.

Configuration is parsed with entity resolution, DTD loading and network access off, and a
document that declares a DOCTYPE at all is refused: nothing in our files needs one, and
refusing it closes XXE and entity-expansion ("billion laughs") attacks outright.
Every error names the file and the line.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from lxml import etree

__all__ = ["ConfigError", "parse_xml", "attr_int", "attr_bool", "where"]


class ConfigError(Exception):
    """A configuration file is missing or wrong; the message names the file and the line."""


def where(path: Path, element: etree._Element | None = None) -> str:
    line = element.sourceline if element is not None and element.sourceline else 1
    return f"{path}:{line}"


@functools.cache
def _schema(name: str) -> etree.XMLSchema:
    text = resources.files("tokensmith").joinpath(name).read_bytes()
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
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        root = etree.fromstring(data, parser, base_url=str(path))
    except etree.XMLSyntaxError as exc:
        raise ConfigError(f"{path}:{exc.lineno or 1}: not well-formed XML: {exc.msg}") from None
    if root.getroottree().docinfo.doctype:
        raise ConfigError(
            f"{path}:1: DOCTYPE declarations are not allowed (DTDs and entities are refused)"
        )
    if schema is not None:
        validator = _schema(schema)
        if not validator.validate(root):
            error = validator.error_log[0]
            raise ConfigError(f"{path}:{error.line or 1}: {error.message} (see {schema})")
    return root


def attr_int(path: Path, element: etree._Element, name: str, default: int | None,
             *, minimum: int = 0, maximum: int = 2**31 - 1) -> int | None:
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
            f"{where(path, element)}: {name}={value} on <{element.tag}> is outside"
            f" {minimum}..{maximum}"
        )
    return value


def attr_bool(path: Path, element: etree._Element, name: str, default: bool) -> bool:
    """The boolean attribute *name* ("true"/"false") of *element*, or *default*."""
    raw = element.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value not in ("true", "false"):
        raise ConfigError(
            f"{where(path, element)}: {name}={raw!r} on <{element.tag}> must be true or false"
        )
    return value == "true"
