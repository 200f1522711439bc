"""Plugins add routes to the Quart app (the register_routes hook), on a real server."""

from __future__ import annotations

import shutil
import signal
import textwrap

import pytest
from conftest import DEFAULT_LISTENERS, StartupFailed, start_server

ROUTES = textwrap.dedent("""
    from quart import request
    from tokensmith import hookimpl

    @hookimpl
    def client_auth_failure(event, listener):
        listener.stash["failures"] = listener.stash.get("failures", 0) + 1

    @hookimpl
    def register_routes(listener):
        async def failures():
            return {"failures": listener.stash.get("failures", 0), "who": request.args.get("who", "")}

        async def echo(word):
            return {"word": word}

        return [("/audit/failures", failures), ("/audit/echo/<word>", echo, ["GET", "POST"])]
""")


def audit_entry(enable: str) -> str:
    return f'\n        <EventListener type="OAuthEventInterceptor" name="audit_routes" orderId="1" enable="{enable}"/>'


def test_a_plugin_route_is_served_and_follows_its_listener(deployment, serve, make_wheel) -> None:  # noqa: ANN001
    """The plugin's views answer on the running server, see the listener's state, and stop
    answering (404) when a reload disables the listener, and answer again once re-enabled."""
    shutil.copy(make_wheel("audit_routes", ROUTES), deployment.dropins)
    deployment.listeners = DEFAULT_LISTENERS + audit_entry("true")
    deployment.write()
    server = serve(deployment)
    with server.client() as http:
        refused = http.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=("nobody", "x"))
        assert refused.status_code == 401
        answer = http.get("/audit/failures", params={"who": "ops"})
        assert answer.status_code == 200
        assert answer.json() == {"failures": 1, "who": "ops"}
        assert http.post("/audit/echo/hello").json() == {"word": "hello"}
        assert http.delete("/audit/echo/hello").status_code == 405

        deployment.listeners = DEFAULT_LISTENERS + audit_entry("false")
        deployment.write()
        server.process.send_signal(signal.SIGHUP)
        server.wait_for_log("reloaded: configuration 2")
        assert http.get("/audit/failures").status_code == 404

        deployment.listeners = DEFAULT_LISTENERS + audit_entry("true")
        deployment.write()
        server.process.send_signal(signal.SIGHUP)
        server.wait_for_log("reloaded: configuration 3")
        assert http.get("/audit/failures").status_code == 200


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (["/oauth2/jwks"], "the rule /oauth2/jwks is refused: /oauth2 is the core's"),
        (["/oauth2/token/"], "the rule /oauth2/token/ is refused: /oauth2 is the core's"),
        (["/oauth2/<path:rest>"], "the rule /oauth2/<path:rest> is refused: /oauth2 is the core's"),
        (["/<path:any>"], "its first segment is a variable"),
        (["/<name>/x"], "its first segment is a variable"),
        (["/.well-known/openid-configuration"], "/.well-known is the core's"),
        (["/healthz"], "/healthz is the core's"),
        (["/metrics/extra"], "/metrics is the core's"),
        (["/api/clients"], "/api is the core's"),
        (["//audit"], "it starts with '//'"),
        (["/audit", "/audit/"], "register_routes: the rule /audit/ is already served"),
        (["relative"], "a rule must be a path starting with '/'"),
    ],
)
def test_a_route_that_cannot_be_served_stops_startup(deployment, make_wheel, rules, message) -> None:  # noqa: ANN001
    """A plugin's rule at or under the core's paths, or one whose first segment is a variable
    (it would catch the core's paths), or served twice, or not a path, stops the server from
    starting with one line naming the plugin."""
    code = textwrap.dedent(f"""
        from tokensmith import hookimpl

        @hookimpl
        def client_auth_failure(event):
            pass

        @hookimpl
        def register_routes():
            async def view():
                return {{}}
            return [(rule, view) for rule in {rules!r}]
    """)
    shutil.copy(make_wheel("greedy_routes", code), deployment.dropins)
    deployment.listeners = DEFAULT_LISTENERS + (
        '\n        <EventListener type="OAuthEventInterceptor" name="greedy_routes" orderId="1" enable="true"/>'
    )
    deployment.write()
    with pytest.raises(StartupFailed) as failed:
        start_server(deployment)
    assert "plugin 'greedy_routes'" in str(failed.value)
    assert message in str(failed.value)
    assert "Traceback" not in str(failed.value)


BOTH = textwrap.dedent("""
    from tokensmith import hookimpl

    @hookimpl
    def register_routes(listener):
        async def hello():
            return {"both": True}
        return [("/both", hello)]

    @hookimpl
    def client_auth_methods(listener):
        return ["both_method"]

    @hookimpl
    def authenticate_client(request, listener):
        return None

    @hookimpl
    def post_token_issue(event, listener):
        return None
""")


def test_a_plugin_of_two_listener_types_adds_its_routes_once(deployment, serve, make_wheel) -> None:  # noqa: ANN001
    """A plugin enabled as an authenticator and as an interceptor serves its route once; it
    answers while either of its listeners is enabled."""
    shutil.copy(make_wheel("both_kinds", BOTH), deployment.dropins)
    deployment.listeners = DEFAULT_LISTENERS + (
        '\n        <EventListener type="ClientAuthenticator" name="both_kinds" orderId="120" enable="true"/>'
        '\n        <EventListener type="OAuthEventInterceptor" name="both_kinds" orderId="1" enable="true"/>'
    )
    deployment.write()
    server = serve(deployment)
    with server.client() as http:
        assert http.get("/both").json() == {"both": True}
