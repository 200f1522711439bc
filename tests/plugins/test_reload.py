"""SIGHUP: identity.xml and dropins/ change under a running server, with no failed request."""

from __future__ import annotations

import shutil
import signal
import threading
from collections import Counter

import httpx
import pytest
from conftest import DEFAULT_LISTENERS, TRACER, Deployment, Server


class Load:
    """Token requests in a loop on another thread, counting status codes, until stopped."""

    def __init__(self, server: Server, client: dict):
        self.server, self.client = server, client
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.server.client() as http:
            while not self._stop.is_set():
                try:
                    response = http.post(
                        "/oauth2/token",
                        data={
                            "grant_type": "client_credentials",
                            "client_id": self.client["client_id"],
                            "client_secret": self.client["client_secret"],
                        },
                    )
                    self.statuses[response.status_code] += 1
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def post_client(dep: Deployment) -> dict:
    return dep.add_client(
        "loader", "--grant-type", "client_credentials", "--auth-method", "client_secret_post"
    )


def tracer_entry(name: str, trace, enable: str = "true") -> str:  # noqa: ANN001
    return f"""
        <EventListener type="ClientAuthenticator" name="{name}" orderId="5" enable="{enable}">
            <Property name="trace">{trace}</Property>
        </EventListener>"""


def ask(server: Server, client: dict) -> int:
    with server.client() as http:
        return http.post(
            "/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": client["client_id"],
                "client_secret": client["client_secret"],
            },
        ).status_code


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_loads_enables_and_disables_without_failing_requests(
    deployment, serve, make_wheel, tmp_path, workers
) -> None:  # noqa: ANN001
    """A new wheel, then disabling it, apply on SIGHUP while requests keep succeeding."""
    client = post_client(deployment)
    server = serve(deployment, "--workers", str(workers))
    trace = tmp_path / "trace"
    with Load(server, client) as load:
        shutil.copy(make_wheel("hot_tracer", TRACER.format(name="hot_tracer", order=5)), deployment.dropins)
        deployment.listeners = DEFAULT_LISTENERS + tracer_entry("hot_tracer", trace)
        deployment.write()
        server.process.send_signal(signal.SIGHUP)
        server.wait_for_log("reloaded: configuration 2", count=workers)
        for _ in range(4 * workers):
            assert ask(server, client) == 200
        assert "hot_tracer" in trace.read_text()

        deployment.listeners = DEFAULT_LISTENERS + tracer_entry("hot_tracer", trace, enable="false")
        deployment.write()
        server.process.send_signal(signal.SIGHUP)
        server.wait_for_log("reloaded: configuration 3", count=workers)
        trace.unlink()
        for _ in range(4 * workers):
            assert ask(server, client) == 200
        assert not trace.exists()
    assert load.errors == []
    assert set(load.statuses) == {200} and load.statuses[200] > 0


@pytest.mark.parametrize("workers", [1, 2])
def test_invalid_config_on_sighup_keeps_the_running_one(deployment, serve, workers) -> None:  # noqa: ANN001
    """A reload with a broken identity.xml is refused and logged; serving goes on unchanged."""
    client = post_client(deployment)
    server = serve(deployment, "--workers", str(workers))
    (deployment.conf / "identity.xml").write_text("<Identity><EventListeners>")
    server.process.send_signal(signal.SIGHUP)
    server.wait_for_log("reload refused")
    assert "not well-formed XML" in server.log()
    assert ask(server, client) == 200
    assert "reloaded:" not in server.log()


def test_reload_refuses_a_tampered_new_wheel(deployment, serve, make_wheel) -> None:  # noqa: ANN001
    """A wheel that fails its checks on reload is refused; the running listeners stay."""
    client = post_client(deployment)
    server = serve(deployment)
    (deployment.dropins / "broken_plugin-1.0-py3-none-any.whl").write_bytes(b"not a wheel")
    server.process.send_signal(signal.SIGHUP)
    server.wait_for_log("reload refused")
    assert "broken_plugin-1.0-py3-none-any.whl: refused: not a zip archive" in server.log()
    assert ask(server, client) == 200


def test_reload_picks_up_a_changed_wheel(deployment, serve, make_wheel, tmp_path) -> None:  # noqa: ANN001
    """Replacing a plugin wheel with a new version runs the new code after SIGHUP."""
    client = post_client(deployment)
    trace = tmp_path / "trace"
    deployment.listeners = DEFAULT_LISTENERS + tracer_entry("versioned", trace)
    deployment.write()
    first = make_wheel(
        "versioned",
        TRACER.format(name="versioned", order=5).replace('out.write("versioned', 'out.write("v1'),
        version="1.0",
    )
    shutil.copy(first, deployment.dropins)
    server = serve(deployment)
    assert ask(server, client) == 200
    first_copy = deployment.dropins / first.name
    first_copy.unlink()
    shutil.copy(
        make_wheel(
            "versioned",
            TRACER.format(name="versioned", order=5).replace('out.write("versioned', 'out.write("v2'),
            version="2.0",
        ),
        deployment.dropins,
    )
    server.process.send_signal(signal.SIGHUP)
    server.wait_for_log("reloaded: configuration 2")
    assert ask(server, client) == 200
    assert trace.read_text().split() == ["v1", "v2"]


def test_sigterm_stops_a_server_whose_reload_hangs(deployment, serve, make_wheel) -> None:  # noqa: ANN001
    """A new wheel whose import never finishes, then SIGHUP: the server goes on serving, and
    SIGTERM still stops it at once (the hung reload thread does not hold up the exit)."""
    import time

    client = post_client(deployment)
    server = serve(deployment)
    shutil.copy(make_wheel("hangs_at_import", "import time\ntime.sleep(300)\n"), deployment.dropins)
    server.process.send_signal(signal.SIGHUP)
    time.sleep(1)
    assert ask(server, client) == 200
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0
    assert time.monotonic() - started < 10
