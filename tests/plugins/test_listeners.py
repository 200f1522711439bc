"""Listeners through the real server: order, enablement, properties and plugin faults."""

from __future__ import annotations

import shutil
import signal
import textwrap

import pytest
from conftest import DEFAULT_LISTENERS, TRACER, StartupFailed, start_server


@pytest.fixture
def tracers(make_wheel):  # noqa: ANN001
    """Two third-party authenticators that write their name to a trace file when asked."""
    return [
        make_wheel(name, TRACER.format(name=name, order=order))
        for name, order in (("tracer_a", 50), ("tracer_b", 60))
    ]


def line_of(path, text: str) -> int:  # noqa: ANN001
    """The 1-based line of *path* that contains *text*."""
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def token_request(server, client):  # noqa: ANN001, ANN201
    with server.client() as http:
        return http.post(
            "/oauth2/token",
            auth=(client["client_id"], client["client_secret"]),
            data={"grant_type": "client_credentials"},
        )


def basic_client(deployment):  # noqa: ANN001, ANN201
    return deployment.add_client(
        "demo", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic"
    )


def test_basic_auth_disabled_in_identity_xml(deployment, serve) -> None:  # noqa: ANN001
    """With basic_auth enable="false", Basic gets 401 invalid_client and post still works."""
    deployment.listeners = DEFAULT_LISTENERS.replace(
        'name="basic_auth" orderId="100" enable="true"', 'name="basic_auth" orderId="100" enable="false"'
    )
    deployment.write()
    basic = basic_client(deployment)
    post = deployment.add_client(
        "post", "--grant-type", "client_credentials", "--auth-method", "client_secret_post"
    )
    server = serve(deployment)
    assert any("basic_auth" in line and "disabled" in line for line in server.stdout_lines)
    response = token_request(server, basic)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"] == 'Basic realm="tokensmith"'
    with server.client() as http:
        ok = http.post(
            "/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": post["client_id"],
                "client_secret": post["client_secret"],
            },
        )
    assert ok.status_code == 200


def test_calls_follow_order_id_not_defaults(deployment, serve, tracers, tmp_path) -> None:  # noqa: ANN001
    """identity.xml's orderId decides the calling order, overriding the plugins' defaults."""
    for wheel in tracers:
        shutil.copy(wheel, deployment.dropins)
    trace = tmp_path / "trace"
    deployment.listeners = (
        DEFAULT_LISTENERS
        + f"""
        <EventListener type="ClientAuthenticator" name="tracer_a" orderId="90">
            <Property name="trace">{trace}</Property>
        </EventListener>
        <EventListener type="ClientAuthenticator" name="tracer_b" orderId="20">
            <Property name="trace">{trace}</Property>
        </EventListener>"""
    )
    deployment.write()
    server = serve(deployment)
    assert token_request(server, basic_client(deployment)).status_code == 200
    assert trace.read_text().split() == ["tracer_b", "tracer_a"]


def test_equal_order_ids_are_ordered_by_name(deployment, serve, tracers, tmp_path) -> None:  # noqa: ANN001
    """Two listeners with the same orderId run in the order of their names."""
    for wheel in tracers:
        shutil.copy(wheel, deployment.dropins)
    trace = tmp_path / "trace"
    deployment.listeners = DEFAULT_LISTENERS + "".join(
        f"""
        <EventListener type="ClientAuthenticator" name="{name}" orderId="7">
            <Property name="trace">{trace}</Property>
        </EventListener>"""
        for name in ("tracer_b", "tracer_a")
    )
    deployment.write()
    server = serve(deployment)
    token_request(server, basic_client(deployment))
    assert trace.read_text().split() == ["tracer_a", "tracer_b"]


def test_disabled_listener_is_not_called(deployment, serve, tracers, tmp_path) -> None:  # noqa: ANN001
    """A listener with enable="false" is never called."""
    for wheel in tracers:
        shutil.copy(wheel, deployment.dropins)
    trace = tmp_path / "trace"
    deployment.listeners = (
        DEFAULT_LISTENERS
        + f"""
        <EventListener type="ClientAuthenticator" name="tracer_a" enable="false"/>
        <EventListener type="ClientAuthenticator" name="tracer_b">
            <Property name="trace">{trace}</Property>
        </EventListener>"""
    )
    deployment.write()
    server = serve(deployment)
    assert token_request(server, basic_client(deployment)).status_code == 200
    assert trace.read_text().split() == ["tracer_b"]


def test_missing_plugin_is_a_startup_error_naming_file_and_line(deployment) -> None:  # noqa: ANN001
    """An enabled entry naming an absent plugin stops startup with file, line and what exists."""
    deployment.listeners = (
        DEFAULT_LISTENERS
        + """
        <EventListener type="ClientAuthenticator" name="mutual_tlz" orderId="158"/>"""
    )
    deployment.write()
    with pytest.raises(StartupFailed) as failure:
        start_server(deployment)
    message = failure.value.args[0]
    identity = deployment.conf / "identity.xml"
    assert f"{identity}:{line_of(identity, 'mutual_tlz')}:" in message
    assert "mutual_tlz" in message and "basic_auth, mutual_tls, post_body_auth" in message
    assert "Traceback" not in message


def test_disabled_entry_for_missing_plugin_is_fine(deployment, serve) -> None:  # noqa: ANN001
    """An entry that names an absent plugin but says enable="false" does not stop startup."""
    deployment.listeners = (
        DEFAULT_LISTENERS
        + """
        <EventListener type="ClientAuthenticator" name="not_installed" enable="false"/>"""
    )
    deployment.write()
    server = serve(deployment)
    assert server.urls


def test_unknown_listener_type_is_an_error(deployment) -> None:  # noqa: ANN001
    """An unknown type= is a startup error naming the line and the known types."""
    deployment.listeners = (
        DEFAULT_LISTENERS
        + """
        <EventListener type="ClientAuthenticatr" name="basic_auth"/>"""
    )
    deployment.write()
    with pytest.raises(StartupFailed) as failure:
        start_server(deployment)
    line = line_of(deployment.conf / "identity.xml", "ClientAuthenticatr")
    assert f"identity.xml:{line}: unknown listener type 'ClientAuthenticatr'" in failure.value.args[0]


def test_listener_configure_error_names_the_entry(deployment, tracers) -> None:  # noqa: ANN001
    """A ValueError from listener_configure stops startup naming identity.xml and the line."""
    shutil.copy(tracers[0], deployment.dropins)
    deployment.listeners = (
        DEFAULT_LISTENERS
        + """
        <EventListener type="ClientAuthenticator" name="tracer_a" orderId="5"/>"""
    )
    deployment.write()
    with pytest.raises(StartupFailed) as failure:
        start_server(deployment)
    line = line_of(deployment.conf / "identity.xml", 'name="tracer_a"')
    assert (
        f"identity.xml:{line}: listener 'tracer_a': the trace property is required" in failure.value.args[0]
    )


def test_plugin_that_raises_gives_server_error_and_is_logged(deployment, serve, make_wheel) -> None:  # noqa: ANN001
    """A plugin exception is server_error for that request, logged with its name; the server goes on."""
    wheel = make_wheel(
        "flaky_auth",
        textwrap.dedent("""
        from tokensmith import hookimpl

        @hookimpl
        def client_auth_methods():
            return ["flaky"]

        @hookimpl
        def authenticate_client(request):
            if request.form.get("boom"):
                raise RuntimeError("kaboom")
            return None
    """),
    )
    shutil.copy(wheel, deployment.dropins)
    client = basic_client(deployment)
    server = serve(deployment)
    with server.client() as http:
        auth = (client["client_id"], client["client_secret"])
        failed = http.post("/oauth2/token", auth=auth, data={"grant_type": "client_credentials", "boom": "1"})
        assert failed.status_code == 500
        assert failed.json() == {"error": "server_error", "error_description": "an internal error occurred"}
        assert "kaboom" not in failed.text
        after = http.post("/oauth2/token", auth=auth, data={"grant_type": "client_credentials"})
        assert after.status_code == 200
    assert "ClientAuthenticator/flaky_auth raised in authenticate_client" in server.log()
    assert "RuntimeError: kaboom" in server.log()


def test_hanging_plugin_times_out_with_server_error(deployment, serve, make_wheel) -> None:  # noqa: ANN001
    """A listener slower than ListenerTimeoutSeconds gets server_error, logged; others go on."""
    wheel = make_wheel(
        "sleepy_auth",
        textwrap.dedent("""
        import asyncio
        from tokensmith import hookimpl

        @hookimpl
        def client_auth_methods():
            return ["sleepy"]

        @hookimpl
        async def authenticate_client(request):
            if request.form.get("sleep"):
                await asyncio.sleep(30)
            return None
    """),
    )
    shutil.copy(wheel, deployment.dropins)
    deployment.oauth = "<ListenerTimeoutSeconds>0.5</ListenerTimeoutSeconds>"
    deployment.write()
    client = basic_client(deployment)
    server = serve(deployment)
    auth = (client["client_id"], client["client_secret"])
    with server.client() as http:
        slow = http.post("/oauth2/token", auth=auth, data={"grant_type": "client_credentials", "sleep": "1"})
        assert slow.status_code == 500 and slow.json()["error"] == "server_error"
        assert (
            http.post("/oauth2/token", auth=auth, data={"grant_type": "client_credentials"}).status_code
            == 200
        )
    assert (
        "ClientAuthenticator/sleepy_auth failed in authenticate_client: no answer within 0.5 s"
        in server.log()
    )


RAISER = textwrap.dedent("""
    import asyncio
    from tokensmith import hookimpl

    EXCEPTIONS = {"SystemExit": SystemExit, "KeyboardInterrupt": KeyboardInterrupt,
                  "GeneratorExit": GeneratorExit, "CancelledError": asyncio.CancelledError}

    @hookimpl
    def client_auth_methods():
        return ["raiser"]

    @hookimpl
    async def authenticate_client(request):
        name = request.form.get("raise")
        if name:
            await asyncio.sleep(0)
            raise EXCEPTIONS[name]()
        return None

    @hookimpl
    def pre_token_issue(event):
        if event.client.name == "sync-exit":
            raise SystemExit(3)
        return None
""")


@pytest.mark.parametrize("workers", [1, 2])
def test_hook_raising_base_exceptions_is_server_error_for_that_request(
    deployment, serve, make_wheel, workers
) -> None:  # noqa: ANN001
    """SystemExit, KeyboardInterrupt, GeneratorExit or CancelledError from a hook (async or
    plain def) is server_error for that request only: the worker, and the connection, go on."""
    shutil.copy(make_wheel("raiser_auth", RAISER), deployment.dropins)
    client = basic_client(deployment)
    exiting = deployment.add_client(
        "sync-exit", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic"
    )
    server = serve(deployment, "--workers", str(workers))
    auth = (client["client_id"], client["client_secret"])
    with server.client() as http:
        for name in ("SystemExit", "KeyboardInterrupt", "GeneratorExit", "CancelledError") * workers:
            failed = http.post(
                "/oauth2/token", auth=auth, data={"grant_type": "client_credentials", "raise": name}
            )
            assert failed.status_code == 500, name
            assert failed.json() == {
                "error": "server_error",
                "error_description": "an internal error occurred",
            }
        failed = http.post(
            "/oauth2/token",
            auth=(exiting["client_id"], exiting["client_secret"]),
            data={"grant_type": "client_credentials"},
        )
        assert failed.status_code == 500 and failed.json()["error"] == "server_error"
        for _ in range(4):
            assert (
                http.post("/oauth2/token", auth=auth, data={"grant_type": "client_credentials"}).status_code
                == 200
            )
    assert server.process.poll() is None
    assert "exited with" not in server.log()
    assert "OAuthEventInterceptor/raiser_auth raised in pre_token_issue" in server.log()


def test_systemexit_at_import_on_sighup_is_a_refused_reload(deployment, serve, make_wheel) -> None:  # noqa: ANN001
    """A new wheel that calls sys.exit() when imported, then SIGHUP to the supervisor: the
    reload is refused in one line and the service goes on."""
    client = basic_client(deployment)
    server = serve(deployment, "--workers", "2")
    shutil.copy(make_wheel("exit_at_import", "import sys\nsys.exit(4)\n"), deployment.dropins)
    server.process.send_signal(__import__("signal").SIGHUP)
    server.wait_for_log("reload refused")
    assert "loading exit_at_import failed: SystemExit: 4" in server.log()
    assert server.process.poll() is None
    for _ in range(4):
        assert token_request(server, client).status_code == 200


BLOCKING_SYNC = textwrap.dedent("""
    import time
    from tokensmith import hookimpl

    @hookimpl
    def client_auth_methods():
        return ["blocking_sync"]

    class SlowToSay(Exception):
        def __str__(self):
            time.sleep(4)
            return "slow"

    class SlowToAwait:
        def __await__(self):
            time.sleep(4)
            yield

    @hookimpl
    def authenticate_client(request):
        if request.form.get("block") == "sync":
            time.sleep(4)
        if request.form.get("block") == "slowstr":
            raise SlowToSay()
        if request.form.get("block") == "slowawait":
            return SlowToAwait()
        return None
""")

BLOCKING_ASYNC = textwrap.dedent("""
    import asyncio
    import time
    from tokensmith import hookimpl

    @hookimpl
    def client_auth_methods():
        return ["blocking_async"]

    @hookimpl
    async def authenticate_client(request):
        if request.form.get("block") == "async":
            time.sleep(2)
        if request.form.get("block") == "swallow":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                await asyncio.sleep(4)
        return None
""")


def blocking_server(deployment, serve, make_wheel, wheels: dict[str, str]):  # noqa: ANN001, ANN201
    """A server with ListenerTimeoutSeconds 1 and the plugins *wheels* (name: source), warmed
    up; and a function that asks for a token with form field block=BLOCK and returns the
    status and how long the answer took."""
    import time

    for name, code in wheels.items():
        shutil.copy(make_wheel(name, code), deployment.dropins)
    deployment.oauth = "<ListenerTimeoutSeconds>1</ListenerTimeoutSeconds>"
    deployment.write()
    client = basic_client(deployment)
    server = serve(deployment)
    auth = (client["client_id"], client["client_secret"])

    def timed(block: str | None) -> tuple[int, float]:
        with server.client() as http:
            started = time.monotonic()
            data = {"grant_type": "client_credentials", **({"block": block} if block else {})}
            response = http.post("/oauth2/token", auth=auth, data=data)
            return response.status_code, time.monotonic() - started

    assert timed(None)[0] == 200  # warm
    return server, timed


def test_blocking_hooks_are_cut_off(deployment, serve, make_wheel) -> None:  # noqa: ANN001
    """ListenerTimeoutSeconds 1: a plain def hook that sleeps 4 s runs in a thread, is
    answered with server_error at the deadline, and an unrelated request meanwhile is served
    at once; an async def hook that swallows its cancellation is dropped at the deadline; an
    async def hook that blocks the loop for 2 s cannot be interrupted, but its result is
    discarded (server_error) and it is named in the log."""
    import concurrent.futures
    import time

    server, timed = blocking_server(
        deployment, serve, make_wheel, {"blocking_sync": BLOCKING_SYNC, "blocking_async": BLOCKING_ASYNC}
    )
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(timed, "sync")
        time.sleep(0.3)
        status, took = timed(None)
        assert status == 200 and took < 0.6, took
        status, took = slow.result()
    assert status == 500 and took < 2.5, took
    status, took = timed("swallow")
    assert status == 500 and took < 2.5, took
    status, took = timed("async")
    assert status == 500
    assert timed(None)[0] == 200
    log = server.log()
    assert "blocking_sync failed in authenticate_client: no answer within 1 s" in log
    assert "blocking_async failed in authenticate_client: held the event loop for 2." in log


def test_a_plain_hook_cannot_block_the_loop_through_what_it_returns(deployment, serve, make_wheel) -> None:  # noqa: ANN001
    """A plain def hook's exception is formatted in its thread (a __str__ that sleeps used to
    run on the event loop, in the log call), and an awaitable it returns is refused, not
    awaited on the loop (an __await__ that sleeps stalled every request, unlogged)."""
    import concurrent.futures
    import time

    server, timed = blocking_server(deployment, serve, make_wheel, {"blocking_sync": BLOCKING_SYNC})
    for block in ("slowstr", "slowawait"):
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            slow = pool.submit(timed, block)
            time.sleep(0.3)
            status, took = timed(None)
            assert status == 200 and took < 0.6, (block, took)
            assert slow.result()[0] == 500, block
    server.wait_for_log("blocking_sync failed in authenticate_client: returned an awaitable")


NEVER_ENDING_THREAD = textwrap.dedent("""
    import threading
    import time
    from tokensmith import hookimpl

    threading.Thread(target=time.sleep, args=(3600,), name="plugin-forever").start()

    @hookimpl
    def client_auth_methods():
        return ["forever_method"]

    @hookimpl
    async def authenticate_client(request):
        return None
""")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_plugin_thread_does_not_keep_a_stopped_server_alive(deployment, make_wheel, workers) -> None:  # noqa: ANN001
    """A plugin that starts a thread and never ends it: the server still stops on SIGINT
    (the interpreter used to wait for that thread after printing "tokensmith stopped")."""
    import time

    from conftest import start_server

    shutil.copy(make_wheel("forever_thread", NEVER_ENDING_THREAD), deployment.dropins)
    server = start_server(deployment, "--workers", workers)
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 8


def test_a_sighup_before_the_server_is_ready_is_a_reload_not_a_kill(deployment) -> None:  # noqa: ANN001
    """SIGHUP while `tokensmith serve` is still starting is held until the reload handler
    exists, then reloads; it used to end the process with status 129 and no word."""
    import subprocess
    import sys as _sys
    import time

    from conftest import TOKENSMITH

    process = subprocess.Popen(
        [TOKENSMITH, "serve", "--conf", str(deployment.conf)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(0.25)  # importing, loading plugins: no handler yet
        process.send_signal(signal.SIGHUP)
        assert process.stdout is not None
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("reloaded:" in line for line in lines):
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
        assert process.poll() is None, (process.returncode, lines)
        assert any("reloaded:" in line for line in lines), lines
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=15)
        if process.stdout is not None:
            process.stdout.close()
    assert _sys.platform != "linux" or process.returncode == 0
