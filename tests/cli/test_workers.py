"""``tokensmith serve --workers N``: the workers share the load, a dead one is replaced, and
one that dies while starting is reported."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest
from conftest import Server, StartupFailed, start_server


def workers_of(server: Server) -> list[int]:
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text()
    return sorted(int(pid) for pid in children.split())


def tcp_connections(pid: int) -> int:
    """How many sockets process *pid* has open (the listening ones included)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            pass  # closed meanwhile
    return count


def test_keep_alive_connections_are_spread_over_the_workers(deployment, serve) -> None:  # noqa: ANN001
    """24 keep-alive connections opened at once land on both workers (SO_REUSEPORT), not all
    on whichever was idle; with one shared socket one worker took every connection."""
    server = serve(deployment, "--workers", "2")
    workers = workers_of(server)
    assert len(workers) == 2
    before = {pid: tcp_connections(pid) for pid in workers}
    context = ssl.create_default_context(cafile=str(deployment.server_cert))
    host, port = server.url.removeprefix("https://").rsplit(":", 1)
    # All connected before any is accepted, as a load balancer or a load generator does.
    raw = [socket.create_connection((host, int(port)), timeout=10) for _ in range(24)]
    connections: list[ssl.SSLSocket] = []
    try:
        for sock in raw:
            tls = context.wrap_socket(sock, server_hostname="127.0.0.1")
            connections.append(tls)
            tls.sendall(b"GET /oauth2/jwks HTTP/1.1\r\nHost: x\r\n\r\n")
            assert tls.recv(64).startswith(b"HTTP/1.1 200")
        gained = {pid: tcp_connections(pid) - before[pid] for pid in workers}
        assert sum(gained.values()) == 24
        assert min(gained.values()) >= 3, gained  # even split odds of failing: about 4e-5
    finally:
        for sock in [*connections, *raw]:  # wrapping detached the raw ones it wrapped
            sock.close()


def test_a_killed_worker_is_replaced_on_its_sockets(deployment, serve) -> None:  # noqa: ANN001
    """kill -9 of a worker: the supervisor starts another on the same sockets, and every new
    connection is served again."""
    server = serve(deployment, "--workers", "2")
    first = workers_of(server)
    os.kill(first[0], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while (now := workers_of(server)) == first or len(now) < 2:
        assert time.monotonic() < deadline, "no replacement worker"
        time.sleep(0.1)
    server.wait_for_log("starting another")
    time.sleep(1)  # the replacement builds its app before it accepts
    with server.client() as http:
        for _ in range(20):
            response = http.get("/oauth2/jwks", headers={"Connection": "close"})
            assert response.status_code == 200


CRASH_IN_WORKER = """
import multiprocessing
import os

from tokensmith import hookimpl


@hookimpl
def listener_default_order():
    return 500


@hookimpl
def client_auth_methods():
    return ["crash_method"]


@hookimpl
def listener_configure(listener):
    if multiprocessing.current_process().name == "tokensmith-worker":  # not in the check
        os._exit(3)
"""


def test_a_worker_that_dies_before_it_is_ready_is_reported(deployment, make_wheel) -> None:  # noqa: ANN001
    """A worker that dies while starting (here a plugin exits the process) makes the
    supervisor exit 1 with one line, instead of waiting for it forever."""
    shutil.copy(make_wheel("crash_in_worker", CRASH_IN_WORKER), deployment.dropins)
    started = time.monotonic()
    with pytest.raises(StartupFailed) as failed:
        start_server(deployment, "--workers", "2")
    assert "tokensmith: error: the worker exited before it was ready" in str(failed.value)
    assert time.monotonic() - started < 20


def test_a_second_server_on_the_same_port_is_refused(
    deployment, tmp_path, keystore, wheel_cache, serve
) -> None:  # noqa: ANN001
    """Two `serve --workers 2` on one port: the second refuses to start (SO_REUSEPORT would
    have let it take part of the first one's connections); the first goes on serving."""
    from conftest import new_deployment

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    connectors = f'<Connector address="127.0.0.1" port="{port}" clientAuth="want"/>'
    deployment.connectors = connectors
    deployment.write()
    first = serve(deployment, "--workers", "2")
    second = new_deployment(tmp_path / "second", keystore, wheel_cache, connectors=connectors)
    with pytest.raises(StartupFailed) as failed:
        start_server(second, "--workers", "2").stop()  # stopped if it does start
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in str(failed.value)
    assert str(failed.value).count("\n") == 1
    with first.client() as http:
        assert http.get("/oauth2/jwks").status_code == 200


DIES_WHEN_TOLD = """
import multiprocessing
import os
from pathlib import Path

from tokensmith import hookimpl


@hookimpl
def client_auth_methods():
    return ["dies_method"]


@hookimpl
def listener_configure(listener):
    marker = Path(os.environ["DIE_MARKER"])
    if multiprocessing.current_process().name == "tokensmith-worker" and marker.exists():
        os._exit(3)
"""


def test_a_worker_that_keeps_dying_backs_off_then_gives_up(
    deployment, make_wheel, tmp_path, monkeypatch
) -> None:  # noqa: ANN001
    """Once every replacement dies while starting, the supervisor waits longer before each
    (0.1, 0.2, 0.4, 0.8 s), gives up after five deaths with one line and exit status 1, and
    leaves nothing of the workers' unpacked wheels in $TMPDIR."""
    shutil.copy(make_wheel("dies_when_told", DIES_WHEN_TOLD), deployment.dropins)
    marker = tmp_path / "die"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("DIE_MARKER", str(marker))
    monkeypatch.setenv("TMPDIR", str(scratch))
    server = start_server(deployment, "--workers", "2")
    try:
        assert list(scratch.iterdir())  # the supervisor's private directory
        marker.touch()
        os.kill(workers_of(server)[0], signal.SIGKILL)
        assert server.process.wait(timeout=60) == 1
    finally:
        server.stop()
    log = server.log()
    for delay in ("0.1", "0.2", "0.4", "0.8"):
        assert f"in {delay} s" in log
    assert "died 5 times within 60 s; giving up" in log
    assert list(scratch.iterdir()) == []


SLOW_WORKER = """
import multiprocessing
import time

from tokensmith import hookimpl


@hookimpl
def client_auth_methods():
    return ["slow_method"]


@hookimpl
def listener_configure(listener):
    if multiprocessing.current_process().name == "tokensmith-worker":
        time.sleep(60)
"""


def test_sigterm_while_workers_start_stops_at_once(deployment, make_wheel) -> None:  # noqa: ANN001
    """SIGTERM while the workers are still starting (one takes a minute here) stops the
    supervisor and its workers within seconds, instead of once every worker is ready."""
    import subprocess

    from conftest import TOKENSMITH

    shutil.copy(make_wheel("slow_worker", SLOW_WORKER), deployment.dropins)
    process = subprocess.Popen(
        [TOKENSMITH, "serve", "--conf", str(deployment.conf), "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    children: list[str] = []
    try:
        assert process.stdout is not None
        while "slow_worker" not in process.stdout.readline():  # the check passed
            assert process.poll() is None
        time.sleep(1.5)  # the workers are in listener_configure now
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        assert len(children) == 2
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert time.monotonic() - started < 5
        for pid in children:
            assert (
                not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
            )
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in children:  # only if still one of ours: a pid may have been reused
            try:
                if str(deployment.conf) in Path(f"/proc/{pid}/cmdline").read_text():
                    os.kill(int(pid), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
        process.stdout.close()  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]


RECORDS_IMPORTER = """
import os
from pathlib import Path

from tokensmith import hookimpl

with open(os.environ["IMPORT_LOG"], "a") as out:
    out.write(f"{os.getpid()}\\n")


@hookimpl
def client_auth_methods():
    return ["records_method"]
"""


def test_the_supervisor_never_imports_plugins(deployment, make_wheel, serve, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """Startup and ten SIGHUPs: the plugin is imported by the checks and the workers, never
    by the supervisor, whose sys.path therefore never grows (it used to gain one entry per
    wheel per reload, each pointing at a deleted directory)."""
    shutil.copy(make_wheel("records_importer", RECORDS_IMPORTER), deployment.dropins)
    imports = tmp_path / "imports"
    monkeypatch.setenv("IMPORT_LOG", str(imports))
    server = serve(deployment, "--workers", "2")
    for count in range(1, 11):
        server.process.send_signal(signal.SIGHUP)
        server.wait_for_log("reloaded: configuration", count=2 * count)
    importers = set(imports.read_text().split())
    assert str(server.process.pid) not in importers
    assert len(importers) >= 3  # the first check and the two workers at least


def test_workers_stop_when_the_supervisor_is_killed(deployment) -> None:  # noqa: ANN001
    """kill -9 of the supervisor stops its workers (they get SIGTERM from the kernel), and
    no worker holds another's listening socket: they used to go on serving as orphans, and
    when one of them died too, half of the new connections hung on its socket, kept open by
    its sibling."""
    server = start_server(deployment, "--workers", "2")
    workers: list[int] = []
    try:
        workers = workers_of(server)
        assert len(workers) == 2
        for pid in workers:
            inodes = {
                os.readlink(fd)
                for fd in Path(f"/proc/{pid}/fd").iterdir()
                if os.readlink(fd).startswith("socket:")
            }
            listening = [
                line
                for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                if line.split()[3] == "0A" and f"socket:[{line.split()[9]}]" in inodes
            ]
            assert len(listening) == 1, (pid, listening)  # its own connector socket only
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
            time.sleep(0.1)
        alive = [
            pid
            for pid in workers
            if Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0
        ]
        assert not alive
    finally:
        server.stop()
        for pid in workers:  # orphans, if the test failed: only if the pid is still a tokensmith
            try:
                if b"tokensmith" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError):
                pass


FAILS_IN_ONE_WORKER = """
import os
from tokensmith import hookimpl

@hookimpl
def client_auth_methods():
    return ["flaky_method"]

@hookimpl
def listener_configure(listener):
    marked = listener.properties.get("failIn")
    if marked and open(marked).read().strip() == str(os.getpid()):
        raise ValueError("this worker cannot configure me")

@hookimpl
async def authenticate_client(request):
    return None
"""


def test_a_worker_that_cannot_load_a_checked_reload_is_replaced(deployment, make_wheel, tmp_path) -> None:  # noqa: ANN001
    """The supervisor's check accepts a new configuration, and one worker then fails to load
    it: that worker used to go on serving the old configuration beside one serving the new
    (an authenticator an operator disabled stayed on for half the requests). It now stops,
    and its replacement loads the new configuration."""
    import json

    marker = tmp_path / "fail-in"
    marker.write_text("none")
    shutil.copy(make_wheel("flaky_auth", FAILS_IN_ONE_WORKER), deployment.dropins)
    deployment.listeners += (
        f'\n<EventListener type="ClientAuthenticator" name="flaky_auth" orderId="50">'
        f'<Property name="failIn">{marker}</Property></EventListener>'
    )
    deployment.write()
    server = start_server(deployment, "--workers", "2")
    try:
        marker.write_text(str(workers_of(server)[0]))
        deployment.listeners = deployment.listeners.replace(
            'name="basic_auth" orderId="100" enable="true"', 'name="basic_auth" orderId="100" enable="false"'
        )
        deployment.write()
        server.process.send_signal(signal.SIGHUP)
        server.wait_for_log("could not load the configuration the supervisor checked")
        deadline = time.monotonic() + 30
        methods: list[list[str]] = []
        while time.monotonic() < deadline:
            methods = []
            for _ in range(12):
                with server.client() as http:  # a new connection each: either worker may answer
                    meta = http.get("/.well-known/oauth-authorization-server").json()
                methods.append(meta["token_endpoint_auth_methods_supported"])
            if not any("client_secret_basic" in m for m in methods):
                break
            time.sleep(0.5)
        assert not any("client_secret_basic" in m for m in methods), json.dumps(methods)
        assert server.process.poll() is None
    finally:
        server.stop()
