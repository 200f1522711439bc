"""Bad files in dropins/ and conf/ against the real server and supervisor: every one is a
one-line refusal at startup and "reload refused" on SIGHUP, and nothing stops the service."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import textwrap
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Deployment
from test_dropins import HARMLESS

#: An authenticator whose client_auth_methods returns what the format says.
METHODS = textwrap.dedent("""
    from tokensmith import hookimpl

    @hookimpl
    def client_auth_methods():
        return {value}

    @hookimpl
    def authenticate_client(request):
        return None
""")


def _digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")


def rebuild(
    wheel: Path, target: Path, extra: dict[str, bytes] | None = None, compression: int = zipfile.ZIP_DEFLATED
) -> Path:
    """Copy *wheel* to *target* with *extra* members added and a RECORD that lists them all:
    a wheel that passes the RECORD check whatever else is wrong with it."""
    with zipfile.ZipFile(wheel) as source:
        members = {name: source.read(name) for name in source.namelist()}
    record = next(name for name in members if name.endswith(".dist-info/RECORD"))
    members.pop(record)
    members.update(extra or {})
    lines = [f"{name},{_digest(data)},{len(data)}" for name, data in members.items()]
    with zipfile.ZipFile(target, "w", compression) as out:
        for name, data in members.items():
            out.writestr(name, data)
        out.writestr(record, "\n".join([*lines, f"{record},,"]) + "\n")
    return target


def patch_member(wheel: Path, member: str, *, central: tuple[int, bytes], local: tuple[int, bytes]) -> None:
    """Overwrite bytes of *member*'s central-directory entry and local header in place."""
    raw = bytearray(wheel.read_bytes())
    with zipfile.ZipFile(wheel) as archive:
        info = archive.getinfo(member)
    offset, value = local
    raw[info.header_offset + offset : info.header_offset + offset + len(value)] = value
    entry = raw.rfind(b"PK\x01\x02", 0, raw.rfind(member.encode()) + 1)
    offset, value = central
    raw[entry + offset : entry + offset + len(value)] = value
    wheel.write_bytes(bytes(raw))


def bad_crc(harmless: Path, dropins: Path) -> Path:
    """A stored member whose bytes no longer match their CRC (what an under-declared zip
    bomb produces, too)."""
    target = rebuild(harmless, dropins / harmless.name, compression=zipfile.ZIP_STORED)
    raw = bytearray(target.read_bytes())
    at = raw.find(b"IMPORTED")
    raw[at] ^= 0x20
    target.write_bytes(bytes(raw))
    return target


def compression_99(harmless: Path, dropins: Path) -> Path:
    target = rebuild(harmless, dropins / harmless.name)
    patch_member(target, "harmless_auth.py", central=(10, b"\x63\x00"), local=(8, b"\x63\x00"))
    return target


def encrypted(harmless: Path, dropins: Path) -> Path:
    target = rebuild(harmless, dropins / harmless.name)
    patch_member(target, "harmless_auth.py", central=(8, b"\x01\x00"), local=(6, b"\x01\x00"))
    return target


def directory(harmless: Path, dropins: Path) -> Path:
    target = dropins / "adir-1.0-py3-none-any.whl"
    target.mkdir()
    return target


def long_member(harmless: Path, dropins: Path) -> Path:
    return rebuild(harmless, dropins / harmless.name, {"x" * 300 + ".txt": b"long"})


FILE_CASES: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    "bad-crc": (bad_crc, "Bad CRC-32"),
    "compression-99": (compression_99, "compression method 99"),
    "encrypted": (encrypted, "is encrypted"),
    "directory": (directory, "not a regular file"),
    "300-char-member": (long_member, "member name too long"),
}


@pytest.fixture(scope="module")
def plugin_wheels(tmp_path_factory, make_wheel) -> dict[str, Path]:  # noqa: ANN001
    """The wheels whose code is wrong (built once for the module)."""
    return {
        "harmless": make_wheel("harmless_auth", HARMLESS),
        "two-entry-points": make_wheel(
            "twice_auth",
            METHODS.format(value='["twice"]'),
            entry_points={"twice_a": "twice_auth", "twice_b": "twice_auth"},
        ),
        "methods-int": make_wheel("int_methods", METHODS.format(value="7")),
        "methods-str": make_wheel("str_methods", METHODS.format(value='"header_key"')),
        "tryfirst": make_wheel(
            "first_auth",
            METHODS.format(value='["first"]').replace(
                "@hookimpl\ndef auth", "@hookimpl(tryfirst=True)\ndef auth"
            ),
        ),
        "async-load-hook": make_wheel(
            "async_methods",
            METHODS.format(value='["early"]').replace(
                "def client_auth_methods", "async def client_auth_methods"
            ),
        ),
    }


def break_deployment(case: str, dep: Deployment, wheels: dict[str, Path]) -> tuple[Callable[[], None], str]:
    """Make *dep* bad in the way *case* says; return how to undo it and what the refusal says."""
    identity = dep.conf / "identity.xml"
    if case in FILE_CASES:
        make, expected = FILE_CASES[case]
        target = make(wheels["harmless"], dep.dropins)
        return (
            lambda: shutil.rmtree(target) if target.is_dir() else target.unlink()
        ), f"{target}: refused: " if case != "bad-crc" else expected
    if case == "utf16-pin-file":
        saved = identity.read_text()
        pins = dep.cli("plugins", "pin").stdout
        (dep.conf / "pins").write_text(pins, encoding="utf-16")
        identity.write_text(
            saved.replace(
                "</Identity>", "<Dropins><AllowedWheelsFile>pins</AllowedWheelsFile></Dropins></Identity>"
            )
        )
        return (lambda: identity.write_text(saved)), "pins is not UTF-8 text"
    wheel = wheels[case]
    shutil.copy(wheel, dep.dropins)
    expected = {
        "two-entry-points": "both name twice_auth",
        "methods-int": "client_auth_methods must return a list of method names, not 7",
        "methods-str": "client_auth_methods must return a list of method names, not 'header_key'",
        "tryfirst": "plugin 'first_auth': hook authenticate_client: @hookimpl(tryfirst=True) is not supported",
        "async-load-hook": "plugin 'async_methods': hook client_auth_methods: must not be a coroutine",
    }[case]
    return (lambda: (dep.dropins / wheel.name).unlink()), expected


CASES = [
    *FILE_CASES,
    "utf16-pin-file",
    "two-entry-points",
    "methods-int",
    "methods-str",
    "tryfirst",
    "async-load-hook",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_dropin_stops_startup_with_one_line(deployment, plugin_wheels, case) -> None:  # noqa: ANN001
    """At startup every one of these is one line, "tokensmith: error: ...", exit 1: not an
    internal error, not a traceback."""
    _, expected = break_deployment(case, deployment, plugin_wheels)
    result = deployment.cli("serve", check=False)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tokensmith: error: "), result.stderr
    assert expected in lines[0]


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_dropins_on_sighup_are_refused_and_the_service_goes_on(
    deployment, serve, plugin_wheels, workers
) -> None:  # noqa: ANN001
    """Each bad input, then SIGHUP: "reload refused" with the reason in one line, the
    supervisor and every worker keep running and serving, and a good reload still works."""
    client = deployment.add_client(
        "c", "--grant-type", "client_credentials", "--auth-method", "client_secret_post"
    )
    server = serve(deployment, "--workers", str(workers))

    def ask() -> int:
        with server.client() as http:
            return http.post(
                "/oauth2/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": client["client_id"],
                    "client_secret": client["client_secret"],
                },
            ).status_code

    for number, case in enumerate(CASES, 1):
        undo, expected = break_deployment(case, deployment, plugin_wheels)
        server.process.send_signal(signal.SIGHUP)
        server.wait_for_log("reload refused", count=number)
        refusal = [line for line in server.log().splitlines() if "reload refused" in line][-1]
        assert expected in refusal, (case, refusal)
        assert server.process.poll() is None, case
        assert ask() == 200, case
        undo()
    log = server.log()
    assert "Traceback" not in log and "internal error" not in log
    assert "reloaded:" not in log
    server.process.send_signal(signal.SIGHUP)
    server.wait_for_log("reloaded: configuration 2", count=workers)
    assert ask() == 200


@pytest.mark.parametrize("workers", [1, 2])
def test_fifos_are_refused_without_blocking(deployment, serve, workers) -> None:  # noqa: ANN001
    """A FIFO named *.whl in dropins/, then identity.xml replaced by a FIFO: each reload is
    refused at once ("not a regular file"), a later good reload runs, and SIGTERM still stops
    the server (a blocked read used to hang all three)."""
    server = serve(deployment, "--workers", str(workers))
    fifo = deployment.dropins / "fifo_plugin-1.0-py3-none-any.whl"
    os.mkfifo(fifo)
    server.process.send_signal(signal.SIGHUP)
    server.wait_for_log("reload refused", timeout=10)
    assert f"{fifo}: refused: not a regular file" in server.log()
    fifo.unlink()

    identity = deployment.conf / "identity.xml"
    saved = identity.read_text()
    identity.unlink()
    os.mkfifo(identity)
    server.process.send_signal(signal.SIGHUP)
    server.wait_for_log("reload refused", count=2, timeout=10)
    assert f"{identity}: cannot read: not a regular file" in server.log()
    identity.unlink()
    identity.write_text(saved)

    server.process.send_signal(signal.SIGHUP)
    server.wait_for_log("reloaded: configuration 2", count=workers, timeout=20)
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=20) == 0
    assert time.monotonic() - started < 20


def serve_peak_rss(dep: Deployment) -> tuple[int, str, int]:
    """Run ``tokensmith serve`` (which refuses) and return its exit status, stderr and peak
    resident memory in KiB, measured by a wrapper process that only runs it."""
    import subprocess
    import sys

    from conftest import TOKENSMITH

    wrapper = (
        "import resource, subprocess, sys\n"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stderr.write(r.stderr)\n"
        "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", wrapper, TOKENSMITH, "serve", "--conf", str(dep.conf)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    status, peak = result.stdout.split()
    return int(status), result.stderr, int(peak)


def test_pin_is_checked_before_parsing_and_wheels_are_capped(deployment, harmless) -> None:  # noqa: ANN001
    """With pinning on, an unpinned file is refused for its hash before it is parsed; a huge
    file is refused by its size without being read; a RECORD of a million rows is refused
    without being held; none of them costs the server its memory."""
    pins = deployment.cli("plugins", "pin").stdout
    (deployment.conf / "pins").write_text(pins)
    identity = deployment.conf / "identity.xml"
    unpinned = identity.read_text()
    identity.write_text(
        unpinned.replace(
            "</Identity>", "<Dropins><AllowedWheelsFile>pins</AllowedWheelsFile></Dropins></Identity>"
        )
    )
    junk = deployment.dropins / "junk-1.0-py3-none-any.whl"
    junk.write_bytes(b"not a zip at all")
    status, stderr, _ = serve_peak_rss(deployment)
    assert status == 1 and f"{junk}: refused: sha256 " in stderr and "is not pinned" in stderr
    junk.unlink()

    identity.write_text(unpinned)
    huge = deployment.dropins / "huge-1.0-py3-none-any.whl"
    with huge.open("wb") as out:
        out.truncate(1024**3)  # sparse: a gigabyte of zeros that costs no disk
    status, stderr, peak = serve_peak_rss(deployment)
    assert status == 1 and f"{huge}: refused: larger than 67108864 bytes" in stderr
    assert peak < 200 * 1024, f"peak RSS {peak} KiB"
    huge.unlink()

    rows = "".join(f"ghost/{n}.py,sha256=x,1\n" for n in range(1_000_000)).encode()
    bomb = rebuild(harmless, deployment.dropins / harmless.name)
    with zipfile.ZipFile(bomb) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as out:
        for name, data in members.items():
            out.writestr(name, data + rows if name.endswith("RECORD") else data)
    status, stderr, peak = serve_peak_rss(deployment)
    assert status == 1
    assert f"{bomb}: refused: " in stderr and "RECORD is too large" in stderr
    assert peak < 200 * 1024, f"peak RSS {peak} KiB"


@pytest.fixture
def harmless(make_wheel) -> Path:  # noqa: ANN001
    return make_wheel("harmless_auth", HARMLESS)


@pytest.mark.parametrize(
    ("member", "expected"),
    [
        ("secrets.py", "its top-level module 'secrets' would shadow the standard library"),
        ("tokensmith.py", "its top-level module 'tokensmith' would shadow"),
        ("httpx/__init__.py", "its top-level module 'httpx' would shadow"),
        (
            "tokensmith_post_body_auth.py",
            "its top-level module 'tokensmith_post_body_auth' is also provided by ",
        ),
    ],
)
def test_wheel_that_would_shadow_other_code_is_refused(deployment, harmless, member, expected) -> None:  # noqa: ANN001
    """A wheel shipping a module of the standard library, of tokensmith, of an installed
    distribution or of another wheel in dropins/ beside its own is refused in one line."""
    target = rebuild(
        harmless, deployment.dropins / harmless.name, {member: b"raise SystemExit('shadowed')\n"}
    )
    result = deployment.cli("serve", check=False)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr
    assert target.name in result.stderr


EVIL = """
import os
open(os.environ["EVIL_MARKER"], "w").close()
from tokensmith import hookimpl

@hookimpl
def client_auth_methods():
    return ["harmless"]

@hookimpl
def authenticate_client(request):
    return None
"""


def test_shipped_bytecode_is_not_run(deployment, harmless, serve, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """A wheel whose __pycache__ holds an unchecked-hash .pyc (PEP 552) of other code than its
    reviewed .py: the server runs the .py."""
    import py_compile
    import sys

    evil_source = tmp_path / "harmless_auth.py"
    evil_source.write_text(EVIL)
    compiled = tmp_path / "evil.pyc"
    py_compile.compile(
        str(evil_source),
        str(compiled),
        doraise=True,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    tag = sys.implementation.cache_tag
    rebuild(
        harmless,
        deployment.dropins / harmless.name,
        {f"__pycache__/harmless_auth.{tag}.pyc": compiled.read_bytes()},
    )
    marker = tmp_path / "evil-ran"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    server = serve(deployment)
    with server.client() as http:
        assert http.get("/oauth2/jwks").status_code == 200
    assert not marker.exists()
    assert any("harmless_auth" in line for line in server.stdout_lines)


def test_oversized_identity_xml_is_refused(deployment, serve) -> None:  # noqa: ANN001
    """A valid identity.xml larger than 1 MiB is refused at startup and on SIGHUP, in one
    line, without being parsed."""
    identity = deployment.conf / "identity.xml"
    saved = identity.read_text()
    disabled = "".join(
        f'<EventListener type="ClientAuthenticator" name="off{n}" enable="false"/>\n' for n in range(20_000)
    )
    identity.write_text(saved.replace("</EventListeners>", disabled + "</EventListeners>"))
    assert identity.stat().st_size > 1024 * 1024
    result = deployment.cli("serve", check=False)
    assert result.returncode == 1
    assert f"{identity}: cannot read: larger than 1048576 bytes" in result.stderr
    big = identity.read_text()
    identity.write_text(saved)
    server = serve(deployment, "--workers", "2")
    identity.write_text(big)
    server.process.send_signal(signal.SIGHUP)
    server.wait_for_log("reload refused")
    assert "larger than 1048576 bytes" in server.log()
    with server.client() as http:
        assert http.get("/oauth2/jwks").status_code == 200


#: A plugin that, when imported in the supervisor's configuration check, writes to every pipe
#: of its process what the file named by TS_ANSWER_MODE asks for: an answer forged to run
#: code in the supervisor, one that is not an answer at all, or the start of one and then
#: nothing.
FORGER = textwrap.dedent("""
    import multiprocessing, os, pickle, stat, time
    from tokensmith import hookimpl

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + os.environ["TS_FORGED_MARK"],))

    def _pipes():
        for name in os.listdir("/proc/self/fd"):
            try:
                fd = int(name)
                if fd > 2 and stat.S_ISFIFO(os.fstat(fd).st_mode):
                    yield fd
            except (OSError, ValueError):
                pass

    if multiprocessing.current_process().name == "tokensmith-check":
        mode = open(os.environ["TS_ANSWER_MODE"]).read().strip()
        data = {"pickle": pickle.dumps(Payload()), "garbage": b"not an answer",
                "partial": b"[true, ["}[mode]
        for fd in _pipes():
            try:
                os.set_blocking(fd, False)
                os.write(fd, data)
            except OSError:
                pass
        if mode == "partial":
            time.sleep(120)

    @hookimpl
    def client_auth_methods():
        return ["forger_method"]

    @hookimpl
    async def authenticate_client(request):
        return None
""")


def test_the_supervisor_trusts_nothing_its_configuration_check_says(
    deployment, serve, make_wheel, tmp_path, monkeypatch
) -> None:  # noqa: ANN001
    """Plugin code runs in the supervisor's configuration check. Its answer used to be
    unpickled by the supervisor (code from a dropped-in wheel ran there) and read with no
    deadline (half an answer held the supervisor: no SIGTERM, no reaping). Now a forged or
    garbled answer is a refused reload, and a check that never finishes leaves the supervisor
    answering signals."""
    mark, mode = tmp_path / "forged", tmp_path / "mode"
    mode.write_text("garbage")
    monkeypatch.setenv("TS_FORGED_MARK", str(mark))
    monkeypatch.setenv("TS_ANSWER_MODE", str(mode))
    server = serve(deployment, "--workers", "2")
    shutil.copy(make_wheel("forger_auth", FORGER), deployment.dropins)
    for number, kind in enumerate(("pickle", "garbage"), 1):
        mode.write_text(kind)
        server.process.send_signal(signal.SIGHUP)
        server.wait_for_log("reload refused", count=number)
        refusal = [line for line in server.log().splitlines() if "reload refused" in line][-1]
        assert "not its own" in refusal, refusal
        assert server.process.poll() is None and not mark.exists()
    mode.write_text("partial")
    server.process.send_signal(signal.SIGHUP)
    time.sleep(2)  # the check is stuck after half an answer
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 10 and not mark.exists()
