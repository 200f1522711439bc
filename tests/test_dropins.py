"""Checking dropped-in wheels before any of their code runs."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

from conftest import StartupFailed, start_server
from tokensmith.dropins import WheelError, check_wheel, scan_dropins

HARMLESS = '''
from pathlib import Path
from tokensmith import hookimpl

Path(__file__).with_name("IMPORTED").touch()

@hookimpl
def client_auth_methods():
    return ["harmless"]

@hookimpl
def authenticate_client(request):
    return None
'''


def rewrite(wheel: Path, target: Path, change) -> Path:  # noqa: ANN001
    """Copy *wheel* to *target*, passing each member through *change(name, data)*."""
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(target, "w") as out:
        for info in source.infolist():
            result = change(info.filename, source.read(info.filename))
            if result is not None:
                out.writestr(info.filename if isinstance(result, bytes) else result[0],
                             result if isinstance(result, bytes) else result[1])
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
    tampered = rewrite(harmless, tmp_path / harmless.name, lambda name, data:
                       data + b"\nprint('evil')\n" if name == "harmless_auth.py" else data)
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
    target = rewrite(harmless, tmp_path / harmless.name, lambda name, data:
                     ("../escape.py", data) if name == "harmless_auth.py" else data)
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
    rewrite(harmless, deployment.dropins / harmless.name, lambda name, data:
            data.replace(b"harmless", b"harmful") if name == "harmless_auth.py" else data)
    with pytest.raises(StartupFailed) as failure:
        start_server(deployment)
    message = failure.value.args[0]
    assert message.count("\n") == 1 and "Traceback" not in message
    assert f"{deployment.dropins / harmless.name}: refused: harmless_auth.py does not match" in message
    assert not list(Path("/tmp").glob("tokensmith-dropins-*/harmless*/IMPORTED"))
