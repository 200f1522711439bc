"""One source of truth per setting: config/table.py against the doc, the schemas and the loaders.

The table feeds the dataclass defaults and the loaders' checks directly; these tests hold the
two things that cannot import it to the table: docs/configuration.md (generated from it) and
server.xsd / identity.xsd (which check a file first and give its line).
"""

from __future__ import annotations

from decimal import Decimal
from importlib import resources
from pathlib import Path

import pytest
from conftest import ROOT
from lxml import etree
from tokensmith.config.settings import load_identity, load_server
from tokensmith.config.table import INT_MAX, SETTINGS, Setting, reference_markdown
from tokensmith.config.xml import ConfigError

XS = "{http://www.w3.org/2001/XMLSchema}"
SCHEMAS = {"server.xml": "server.xsd", "identity.xml": "identity.xsd"}
#: Choices the schema leaves to the loader, whose message says more than "not an allowed value".
LOADER_CHOICES = {"<Connector sslProtocol>", "<OAuth><ClientCertificateHeader format>"}
BEGIN = "<!-- generated from config/table.py: begin -->\n"
END = "<!-- generated from config/table.py: end -->"


def schema(file: str) -> etree._Element:
    text = resources.files("tokensmith.config").joinpath(SCHEMAS[file]).read_bytes()
    return etree.fromstring(text)


def element_declaration(root: etree._Element, path: str) -> etree._Element:
    """The declaration of the element at *path* below the schema's root element."""
    found = next(d for d in root.iter(f"{XS}element") if d.getparent() is root)
    for step in path.split("/"):
        found = next(d for d in found.iter(f"{XS}element") if d.get("name") == step and d is not found)
    return found


def owned(declaration: etree._Element, kind: str) -> list[etree._Element]:
    """The attribute or element declarations directly inside *declaration*'s own type."""

    def owner(node: etree._Element) -> etree._Element | None:
        parent = node.getparent()
        while parent is not None and parent.tag != f"{XS}element":
            parent = parent.getparent()
        return parent

    return [d for d in declaration.iter(f"{XS}{kind}") if d is not declaration and owner(d) is declaration]


def declaration_of(row: Setting) -> etree._Element:
    root = schema(row.file)
    element = element_declaration(root, row.element)
    if row.attribute is None:
        return element
    matches = [a for a in owned(element, "attribute") if a.get("name") == row.attribute]
    assert matches, f"{SCHEMAS[row.file]} declares no attribute {row.name}"
    return matches[0]


def simple_type(root: etree._Element, declaration: etree._Element) -> etree._Element | None:
    inline = declaration.find(f"{XS}simpleType")
    if inline is not None:
        return inline
    name = declaration.get("type", "")
    return next((t for t in root.iter(f"{XS}simpleType") if t.get("name") == name), None)


def test_the_doc_is_generated_from_the_table() -> None:
    """docs/configuration.md's settings section is exactly what the table renders; if not, run
    ``python -m tokensmith.config.table`` and paste its output between the markers."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert BEGIN in text and END in text
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert section == reference_markdown()


def test_every_setting_appears_in_the_doc_once() -> None:
    section = reference_markdown()
    for row in SETTINGS:
        assert section.count(f"| `{row.name}` |") == 1, row.name


@pytest.mark.parametrize("row", SETTINGS, ids=lambda row: f"{row.file}:{row.name}")
def test_the_schema_agrees_with_the_table(row: Setting) -> None:
    """The schema declares the setting, with the same choices, bounds, requiredness, default
    and words for what is allowed."""
    root = schema(row.file)
    declaration = declaration_of(row)
    if row.attribute is not None:
        assert (declaration.get("use") == "required") == row.required, row.name
    if declaration.get("default") is not None:
        assert declaration.get("default") == str(row.default), row.name
    simple = simple_type(root, declaration)
    restriction = simple.find(f"{XS}restriction") if simple is not None else None
    enumeration = (
        tuple(e.get("value") for e in restriction.iterfind(f"{XS}enumeration"))
        if restriction is not None
        else ()
    )
    if enumeration or row.choices:
        if row.name in LOADER_CHOICES:
            assert not enumeration, row.name
        else:
            assert enumeration == row.choices, row.name
    bounds = {
        facet: Decimal(restriction.find(f"{XS}{facet}").get("value"))
        for facet in ("minInclusive", "maxInclusive", "minExclusive")
        if restriction is not None and restriction.find(f"{XS}{facet}") is not None
    }
    expected = {}
    if row.minimum is not None:
        expected["minExclusive" if row.exclusive_minimum else "minInclusive"] = Decimal(row.minimum)
    if row.maximum is not None:
        expected["maxInclusive"] = Decimal(row.maximum)
    assert bounds == expected, row.name
    words = simple.findtext(f"{XS}annotation/{XS}documentation") if simple is not None else None
    if words:
        assert " ".join(words.split()) == row.allowed, row.name


@pytest.mark.parametrize("file", SCHEMAS)
def test_every_setting_of_the_schema_is_in_the_table(file: str) -> None:
    """Each attribute, and each element with a value of its own, has a row."""
    root = schema(file)
    rows = {(row.element, row.attribute) for row in SETTINGS if row.file == file}
    top = next(d for d in root.iter(f"{XS}element") if d.getparent() is root)

    def walk(declaration: etree._Element, path: str) -> None:
        for attribute in owned(declaration, "attribute"):
            assert (path, attribute.get("name")) in rows, f"{file}: {path} @{attribute.get('name')}"
        children = owned(declaration, "element")
        has_value = declaration.get("type") or declaration.find(f"{XS}simpleType") is not None
        if path and has_value and not children:
            assert (path, None) in rows, f"{file}: {path}"
        for child in children:
            walk(child, f"{path}/{child.get('name')}".lstrip("/"))

    walk(top, "")


def test_an_empty_file_gets_the_table_defaults(tmp_path: Path) -> None:
    """What the loaders give when nothing is set is the table's default, for every setting
    with a value of its own."""
    server_xml = tmp_path / "server.xml"
    server_xml.write_text('<Server><Keystore certificateFile="c.pem" keyFile="k.pem"/><Connector/></Server>')
    server = load_server(server_xml)
    connector = server.connectors[0]
    identity_xml = tmp_path / "identity.xml"
    identity_xml.write_text("<Identity/>")
    identity = load_identity(identity_xml)
    loaded = {
        ("server.xml", "Connector", "address"): connector.address,
        ("server.xml", "Connector", "port"): connector.port,
        ("server.xml", "Connector", "clientAuth"): connector.client_auth,
        ("server.xml", "Connector", "http1"): connector.http1,
        ("server.xml", "Connector", "connectionTimeout"): round(connector.connection_timeout * 1000),
        ("server.xml", "Keystore", "type"): server.keystore.type,
        ("server.xml", "Dropins", "path"): server.dropins,
        ("server.xml", "Truststore", "path"): server.truststore,
    }
    for row in SETTINGS:
        key = (row.file, row.element, row.attribute)
        if key in loaded:
            value = loaded[key]
            expected = (tmp_path / str(row.default)).resolve() if isinstance(value, Path) else row.default
            assert value == expected, row.name
        elif row.file == "identity.xml" and row.key:
            assert getattr(identity, row.key) == row.default, row.name


@pytest.mark.parametrize(
    ("tag", "value", "expected"),
    [
        ("AccessTokenLifetime", "0", "<AccessTokenLifetime> must be positive"),
        ("ListenerTimeoutSeconds", "0", "<ListenerTimeoutSeconds> must be positive"),
        ("AccessTokenLifetime", "soon", "<AccessTokenLifetime> 'soon' is not valid"),
        ("Realm", "", "<Realm> must not be empty"),
        ("AccessTokenFormat", "paseto", "<AccessTokenFormat> 'paseto' is not valid"),
    ],
)
def test_the_loader_checks_by_the_table_without_the_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tag: str, value: str, expected: str
) -> None:
    """With the schema out of the way (a file that bypassed it), the table's bounds and choices
    still refuse a value, naming the file and the line."""
    import tokensmith.config.settings as settings

    real = settings.parse_xml
    monkeypatch.setattr(settings, "parse_xml", lambda path, schema=None: real(path))
    identity_xml = tmp_path / "identity.xml"
    identity_xml.write_text(f"<Identity>\n<OAuth>\n<{tag}>{value}</{tag}>\n</OAuth>\n</Identity>\n")
    with pytest.raises(ConfigError) as refused:
        load_identity(identity_xml)
    assert str(refused.value) == f"{identity_xml}:3: {expected}"


def test_int_max_is_the_schemas_positive_int() -> None:
    root = schema("identity.xml")
    positive = next(t for t in root.iter(f"{XS}simpleType") if t.get("name") == "positiveInt")
    assert positive.find(f"{XS}restriction/{XS}maxInclusive").get("value") == str(INT_MAX)
