"""Checking dropped-in wheels before any of their code runs."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
from conftest import StartupFailed, start_server
from tokensmith.listeners.dropins import WheelError, check_wheel, scan_dropins

HARMLESS = """
from pathlib import Path
from tokensmith import hookimpl

Path(__file__).with_name("IMPORTED").touch()

@hookimpl
def client_auth_methods():
    return ["harmless"]

@hookimpl
def authenticate_client(request):
    return None
"""


def rewrite(wheel: Path, target: Path, change) -> Path:  # noqa: ANN001
    """Copy *wheel* to *target*, passing each member through *change(name, data)*."""
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(target, "w") as out:
        for info in source.infolist():
            result = change(info.filename, source.read(info.filename))
            if result is not None:
                out.writestr(
                    info.filename if isinstance(result, bytes) else result[0],
                    result if isinstance(result, bytes) else result[1],
                )
    return target


@pytest.fixture
def harmless(make_wheel) -> Path:  # noqa: ANN001
    return make_wheel("harmless_auth", HARMLESS)


def test_a_built_wheel_passes(harmless) -> None:  # noqa: ANN001
    """A wheel built normally passes every check and exposes its entry point."""
    info = check_wheel(harmless)
    assert info.entry_points == {"harmless_auth": "harmless_auth"}
    assert len(info.sha256) == 64


def test_tampered_wheel_is_refused(harmless, tmp_path) -> None:  # noqa: ANN001
    """A file edited after the build no longer matches RECORD and the wheel is refused."""
    tampered = rewrite(
        harmless,
        tmp_path / harmless.name,
        lambda name, data: data + b"\nprint('evil')\n" if name == "harmless_auth.py" else data,
    )
    with pytest.raises(WheelError, match=r"harmless_auth\.py does not match its RECORD hash"):
        check_wheel(tampered)


def test_file_missing_from_record_is_refused(harmless, tmp_path) -> None:  # noqa: ANN001
    """A file slipped into the wheel without a RECORD line is refused."""

    def add(name: str, data: bytes):  # noqa: ANN202
        return data

    target = rewrite(harmless, tmp_path / harmless.name, add)
    with zipfile.ZipFile(target, "a") as out:
        out.writestr("sneaky.py", "print('hi')")
    with pytest.raises(WheelError, match="sneaky.py is not listed in RECORD"):
        check_wheel(target)


def test_unsafe_path_is_refused(harmless, tmp_path) -> None:  # noqa: ANN001
    """A member whose path climbs out of the wheel is refused."""
    target = rewrite(
        harmless,
        tmp_path / harmless.name,
        lambda name, data: ("../escape.py", data) if name == "harmless_auth.py" else data,
    )
    with pytest.raises(WheelError, match="unsafe path"):
        check_wheel(target)


def test_not_a_zip_is_refused(tmp_path) -> None:  # noqa: ANN001
    """A .whl that is not a zip archive is refused with its name."""
    fake = tmp_path / "fake_plugin-1.0-py3-none-any.whl"
    fake.write_bytes(b"not a zip")
    with pytest.raises(WheelError, match=r"fake_plugin-1\.0-py3-none-any\.whl: refused: not a zip"):
        check_wheel(fake)


def test_bad_wheel_name_is_refused(harmless, tmp_path) -> None:  # noqa: ANN001
    """A file whose name is not a PEP 427 wheel name is refused."""
    odd = tmp_path / "plugin.whl"
    shutil.copy(harmless, odd)
    with pytest.raises(WheelError, match="not a wheel name"):
        check_wheel(odd)


def test_unsatisfied_requirement_is_refused(make_wheel) -> None:  # noqa: ANN001
    """A wheel whose Requires-Dist is not installed is refused; nothing is installed for it."""
    wheel = make_wheel("needy_auth", HARMLESS, dependencies=("tokensmith", "no-such-dist-xyz>=1"))
    with pytest.raises(WheelError, match="requires no-such-dist-xyz>=1, which is not installed"):
        check_wheel(wheel)
    too_new = make_wheel("picky_auth", HARMLESS, dependencies=("tokensmith>=99",))
    with pytest.raises(WheelError, match=r"requires tokensmith>=99, but tokensmith 0\.1\.0 is installed"):
        check_wheel(too_new)


def test_incompatible_platform_is_refused(harmless, tmp_path) -> None:  # noqa: ANN001
    """A wheel built for another platform is refused before it is opened."""
    other = tmp_path / "harmless_auth-1.0-cp311-cp311-win_amd64.whl"
    shutil.copy(harmless, other)
    with pytest.raises(WheelError, match="which this Python cannot load"):
        check_wheel(other)


def test_duplicate_plugin_names_are_refused(make_wheel, tmp_path) -> None:  # noqa: ANN001
    """Two wheels exporting the same entry-point name are refused, naming both."""
    first = make_wheel("dup_one", HARMLESS, entry_points={"same_name": "dup_one"})
    second = make_wheel("dup_two", HARMLESS, entry_points={"same_name": "dup_two"})
    for wheel in (first, second):
        shutil.copy(wheel, tmp_path)
    with pytest.raises(WheelError, match=f"plugin name 'same_name' is also exported by {first.name}"):
        scan_dropins(tmp_path)


def test_server_refuses_to_start_with_a_tampered_wheel(deployment, harmless, tmp_path) -> None:  # noqa: ANN001
    """A tampered wheel in dropins/ stops startup with one line naming it, before any import."""
    # Other test runs on this machine may leave their own: only a new one would be ours.
    imported_before = set(Path("/tmp").glob("tokensmith-dropins-*/harmless*/IMPORTED"))
    rewrite(
        harmless,
        deployment.dropins / harmless.name,
        lambda name, data: data.replace(b"harmless", b"harmful") if name == "harmless_auth.py" else data,
    )
    with pytest.raises(StartupFailed) as failure:
        start_server(deployment)
    message = failure.value.args[0]
    assert message.count("\n") == 1 and "Traceback" not in message
    assert f"{deployment.dropins / harmless.name}: refused: harmless_auth.py does not match" in message
    assert set(Path("/tmp").glob("tokensmith-dropins-*/harmless*/IMPORTED")) <= imported_before


def pin_deployment(deployment, pins: str) -> None:  # noqa: ANN001
    identity = deployment.conf / "identity.xml"
    identity.write_text(identity.read_text().replace("</Identity>", f"<Dropins>{pins}</Dropins></Identity>"))


def test_pinned_wheels_load_and_unpinned_are_refused(deployment, harmless) -> None:  # noqa: ANN001
    """With pinning on, the wheels in the pin file start; an extra wheel stops startup."""
    pins = deployment.cli("plugins", "pin").stdout
    assert len(pins.splitlines()) == 3
    (deployment.conf / "dropins.sha256").write_text(pins)
    pin_deployment(deployment, "<AllowedWheelsFile>dropins.sha256</AllowedWheelsFile>")
    server = start_server(deployment)
    server.stop()
    shutil.copy(harmless, deployment.dropins)
    with pytest.raises(StartupFailed) as failure:
        start_server(deployment)
    assert f"{harmless.name}: refused: sha256 " in failure.value.args[0]
    assert "is not pinned in identity.xml <Dropins>" in failure.value.args[0]


def test_pinned_inline_hash(deployment, harmless) -> None:  # noqa: ANN001
    """An <AllowedWheel sha256> entry admits exactly that wheel."""
    hashes = "".join(
        f'<AllowedWheel sha256="{check_wheel(w).sha256}"/>' for w in deployment.dropins.glob("*.whl")
    )
    pin_deployment(deployment, hashes)
    shutil.copy(harmless, deployment.dropins)
    listed = deployment.cli("plugins", "list", check=False)
    assert listed.returncode == 1 and "harmless_auth-1.0-py3-none-any.whl: refused" in listed.stderr
    deployment.write()
    pin_deployment(deployment, hashes + f'<AllowedWheel sha256="{check_wheel(harmless).sha256}"/>')
    assert "harmless_auth" in deployment.cli("plugins", "list").stdout


def test_bad_pin_file_line_is_named(deployment) -> None:  # noqa: ANN001
    """A pin file line that is not a SHA-256 is reported with the file and line."""
    (deployment.conf / "pins").write_text("# pins\nnot-a-hash  x.whl\n")
    pin_deployment(deployment, "<AllowedWheelsFile>pins</AllowedWheelsFile>")
    result = deployment.cli("plugins", "list", check=False)
    assert result.returncode == 1
    assert f"{deployment.conf / 'pins'}:2: expected a SHA-256" in result.stderr


COMPILED_SETUP = """
from setuptools import Extension, setup
setup(ext_modules=[Extension("fastcheck", ["fastcheck.c"])])
"""

COMPILED_C = r"""
#include <Python.h>
static PyObject *answer(PyObject *self, PyObject *args) { return PyLong_FromLong(42); }
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, "42"}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "fastcheck", NULL, -1, methods};
PyMODINIT_FUNC PyInit_fastcheck(void) { return PyModule_Create(&module); }
"""

COMPILED_PLUGIN = """
import fastcheck
from tokensmith import hookimpl

@hookimpl
def listener_configure(listener):
    if fastcheck.answer() != 42:
        raise ValueError("the compiled module did not load")
    with open(listener.properties["trace"], "w") as out:
        out.write(f"compiled {fastcheck.answer()}")

@hookimpl
def client_auth_methods():
    return ["compiled"]

@hookimpl
def authenticate_client(request):
    return None
"""


def test_wheel_with_a_compiled_module_loads(deployment, serve, tmp_path) -> None:  # noqa: ANN001
    """A platform wheel with a C extension passes the checks and its extension imports."""
    from conftest import PLUGIN_PYPROJECT
    from tokensmith.listeners.wheelbuild import build_plugin

    source = tmp_path / "compiled"
    source.mkdir()
    (source / "pyproject.toml").write_text(
        PLUGIN_PYPROJECT.format(
            dist="compiled-auth",
            version="1.0",
            module="compiled_auth",
            dependencies='["tokensmith"]',
            entry_points='compiled_auth = "compiled_auth"',
        )
    )
    (source / "setup.py").write_text(COMPILED_SETUP)
    (source / "fastcheck.c").write_text(COMPILED_C)
    (source / "compiled_auth.py").write_text(COMPILED_PLUGIN)
    wheel, _ = build_plugin(source, tmp_path / "out")
    assert "-cp311-" in wheel.name or "-cp3" in wheel.name
    shutil.copy(wheel, deployment.dropins)
    trace = tmp_path / "trace"
    identity = deployment.conf / "identity.xml"
    identity.write_text(
        identity.read_text().replace(
            "</EventListeners>",
            f"""
        <EventListener type="ClientAuthenticator" name="compiled_auth">
            <Property name="trace">{trace}</Property>
        </EventListener></EventListeners>""",
        )
    )
    serve(deployment)
    assert trace.read_text() == "compiled 42"
