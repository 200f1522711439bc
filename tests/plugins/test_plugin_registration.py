"""What a plugin declares is checked when it registers, not when its hook is first called.

The registry calls every listener itself, one at a time in orderId order, so pluggy's own
ordering and wrapping options would be silently ignored; a hook of the wrong kind would only
fail on the first request that reaches it. Both are refused when the plugin loads, in one line
naming the wheel, the plugin and the hook. These tests load real wheels (built with
``make_wheel``) in-process, the way ``tokensmith serve`` and ``plugins list`` do;
test_dropin_faults.py checks the same refusals through the real server at startup and on
SIGHUP.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
from tokensmith.config.settings import IdentitySettings
from tokensmith.config.xml import ConfigError
from tokensmith.listeners.dropins import DropinLoader
from tokensmith.listeners.registry import UNSUPPORTED_HOOKIMPL_OPTIONS, ListenerSet
from tokensmith.oauth.hookspecs import LISTENER_TYPES

#: A working authenticator, with one hook replaced by *hook* (its decorator and body).
TEMPLATE = """
from tokensmith import hookimpl

@hookimpl
def client_auth_methods():
    return ["{name}_method"]

{hook}
"""

GOOD_AUTHENTICATE = """
@hookimpl
def authenticate_client(request):
    return None
"""

#: case -> (module source of the replaced hook, the hook named, what the refusal says)
BAD_HOOKS: dict[str, tuple[str, str, str]] = {
    **{
        option: (
            f"""
@hookimpl({option}=True)
def authenticate_client(request):
    {"yield" if "wrapper" in option else "return None"}
""",
            "authenticate_client",
            f"@hookimpl({option}=True) is not supported: listeners are called one at a time in orderId order",
        )
        for option in UNSUPPORTED_HOOKIMPL_OPTIONS
    },
    "async-load-hook": (
        GOOD_AUTHENTICATE
        + """
@hookimpl
async def listener_configure(listener):
    pass
""",
        "listener_configure",
        "must not be a coroutine (async def): it is called while the plugin loads",
    ),
    "async-default-order": (
        GOOD_AUTHENTICATE
        + """
@hookimpl
async def listener_default_order():
    return 5
""",
        "listener_default_order",
        "must not be a coroutine",
    ),
    "generator-request-hook": (
        """
@hookimpl
def authenticate_client(request):
    yield None
""",
        "authenticate_client",
        "is a generator function; a hook returns its result",
    ),
    "async-generator-interceptor": (
        GOOD_AUTHENTICATE
        + """
@hookimpl
async def post_token_issue(event):
    yield
""",
        "post_token_issue",
        "is a generator function",
    ),
}


def load(dropins: Path, tmp_path: Path) -> ListenerSet:
    """Load *dropins* and build the listeners as the server does; unpacked copies are removed."""
    from tokensmith.listeners.registry import build_listeners

    loader = DropinLoader(dropins, tmp_path / "unpacked")
    try:
        identity = IdentitySettings(path=tmp_path / "identity.xml", listeners=())
        return build_listeners(loader.load(), identity, LISTENER_TYPES)
    finally:
        loader.close()


@pytest.mark.parametrize("case", BAD_HOOKS)
def test_a_hook_that_could_not_run_as_written_is_refused_at_registration(
    make_wheel, tmp_path, case: str
) -> None:  # noqa: ANN001
    """The refusal is one ConfigError line naming the wheel, the plugin and the hook, raised
    while loading (no hook was called yet)."""
    source, hook, expected = BAD_HOOKS[case]
    module = f"bad_{case.replace('-', '_')}"
    wheel = make_wheel(module, textwrap.dedent(TEMPLATE.format(name=module, hook=source)))
    dropins = tmp_path / "dropins"
    dropins.mkdir()
    shutil.copy(wheel, dropins)
    with pytest.raises(ConfigError) as refused:
        load(dropins, tmp_path)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{dropins / wheel.name}: plugin {module!r}: hook {hook}: "), message
    assert expected in message, message


def test_the_hooks_that_may_be_either_kind_load(make_wheel, tmp_path) -> None:  # noqa: ANN001
    """Request hooks may be plain def or async def, load hooks plain def, optionalhook and
    specname are honoured: such a plugin loads and its methods are declared."""
    code = textwrap.dedent("""
        from tokensmith import hookimpl

        @hookimpl
        def listener_default_order():
            return 7

        @hookimpl
        def listener_configure(listener):
            listener.stash["configured"] = True

        @hookimpl(specname="client_auth_methods")
        def methods():
            return ["fine_method"]

        @hookimpl
        async def authenticate_client(request):
            return None

        @hookimpl
        def post_token_issue(event):
            pass

        @hookimpl(optionalhook=True)
        def a_hook_of_a_later_version():
            pass
    """)
    dropins = tmp_path / "dropins"
    dropins.mkdir()
    shutil.copy(make_wheel("fine_plugin", code), dropins)
    listeners = load(dropins, tmp_path)
    by_type = {listener.type: listener for listener in listeners}
    assert set(by_type) == {"ClientAuthenticator", "OAuthEventInterceptor"}
    authenticator = by_type["ClientAuthenticator"]
    assert authenticator.order_id == 7 and authenticator.stash == {"configured": True}
    assert listeners.declared(authenticator, "client_auth_methods") == ("fine_method",)
