"""The listener registry: plugins from dropins/, ordered and enabled by identity.xml.

pluggy validates hook implementations against ``hookspecs`` when a plugin registers, but it
calls implementations last-registered-first. The host therefore owns the order: for each
listener type it keeps the enabled listeners sorted by (orderId, name) and calls their
implementations one at a time, awaiting coroutines. Because pluggy's own calling loop is not
used, the hookimpl options that only it honours (``wrapper``, ``hookwrapper``, ``tryfirst``,
``trylast``) would be silently ignored; a plugin that uses one is refused when it registers,
as is one whose hook is of the wrong kind (a coroutine where the hook is called while the
plugin loads, a generator anywhere).

The registry knows listeners, not what they are for: the layer above gives it a
``ListenerTypes`` naming its hookspecs, the listener types (families of hooks) and the hooks
whose answers are declarations checked at load. Every set of hookspecs declares the
framework's own two hooks, ``listener_default_order`` and ``listener_configure``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable, Coroutine, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

import pluggy

from tokensmith.config.settings import IdentitySettings
from tokensmith.config.xml import ConfigError
from tokensmith.errors import OAuth2Error, ServerError
from tokensmith.listeners.dropins import PluginSource
from tokensmith.listeners.state import PluginState
from tokensmith.metrics import metrics
from tokensmith.models import Storage, StorageError

__all__ = ["Listener", "ListenerSet", "ListenerTypes", "build_listeners", "DEFAULT_ORDER"]

log = logging.getLogger("tokensmith.listeners.registry")

DEFAULT_ORDER = 1000

#: The framework's own hooks, which every listener may implement, whatever its type.
_COMMON_HOOKS = ("listener_default_order", "listener_configure")
#: pluggy hookimpl options that only pluggy's own calling loop honours. This host calls each
#: listener itself in orderId order, so a wrapper would never wrap and tryfirst would not
#: reorder anything: accepting them would let a plugin believe it runs where it does not.
UNSUPPORTED_HOOKIMPL_OPTIONS = ("wrapper", "hookwrapper", "tryfirst", "trylast")
#: An RFC 7591 token_endpoint_auth_method name, as a client registers it: a registered
#: name or an absolute URI (§2), so printable ASCII without spaces, quotes or backslashes.
#: Threads for hooks written as plain ``def``: they may block (a file, a socket, a lock)
#: without stopping the event loop. A thread still running at the deadline is left to
#: finish; its result is discarded. With every thread stuck, further calls queue and are
#: cut off at their own deadlines.
HOOK_THREADS = 16


class _HookThreads(concurrent.futures.Executor):
    """A pool of daemon threads. ``ThreadPoolExecutor`` joins its threads when the
    interpreter exits, so one hook stuck forever would keep a stopped server from exiting."""

    def __init__(self, size: int):
        self._size = size
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put((future, fn, args, kwargs))
        with self._lock:
            if self._queue.qsize() > self._idle and len(self._threads) < self._size:
                thread = threading.Thread(target=self._work, name="tokensmith-hook", daemon=True)
                self._threads.append(thread)
                self._idle += 1
                thread.start()
        return future

    def _work(self) -> None:
        while True:
            future, fn, args, kwargs = self._queue.get()
            with self._lock:
                self._idle -= 1
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # noqa: B036 - SystemExit too, for the caller
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del future, fn, args, kwargs
            with self._lock:
                self._idle += 1


_pool: _HookThreads | None = None
_pool_lock = threading.Lock()


def _hook_pool() -> _HookThreads:
    global _pool
    with _pool_lock:  # created on first use, so a process that forks has none yet
        if _pool is None:
            _pool = _HookThreads(HOOK_THREADS)
        return _pool


@dataclass(frozen=True)
class ListenerTypes:
    """What the layer above tells the registry about its listeners.

    ``hookspecs`` is the module (or class) holding the ``@hookspec`` functions of *project*,
    the framework's two hooks among them. ``families`` maps each listener type (the ``type``
    of ``<EventListener>``) to the hooks that make a plugin one of that type. ``declarations``
    maps a hook called once per enabled listener at load to a check of its answer: the check
    returns the value to keep or raises ``ValueError`` saying what the hook must return.
    ``shared_hooks`` are further hooks a listener of any type may implement, which the layer
    above calls while loading (``call_sync``), never per request.
    """

    hookspecs: ModuleType | type
    families: Mapping[str, tuple[str, ...]]
    declarations: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    shared_hooks: tuple[str, ...] = ()
    project: str = "tokensmith"

    @property
    def load_hooks(self) -> frozenset[str]:
        """Hooks called while a plugin loads, outside any event loop: plain functions only."""
        return frozenset({*_COMMON_HOOKS, *self.shared_hooks, *self.declarations})

    def family_of(self, hook_name: str) -> str:
        return next(family for family, hooks in self.families.items() if hook_name in hooks)


class _Blocked(Exception):
    """An ``async def`` hook ran for longer than its deadline without yielding."""


@contextlib.contextmanager
def _plugin_code(source: PluginSource, what: str) -> Iterator[None]:
    """Turn anything a plugin raises while it is being loaded into one ``ConfigError`` line.

    ``BaseException`` too: a ``SystemExit`` from a plugin must not stop a server that is
    reloading, nor a supervisor that is checking a configuration.
    """
    try:
        yield
    except ConfigError:
        raise
    except BaseException as exc:  # noqa: B036
        raise ConfigError(
            f"{source.wheel}: plugin {source.name!r}: {what} raised {type(exc).__name__}: {exc}"
        ) from None


@dataclass
class Listener:
    """One listener: a plugin serving one listener type, with its place and properties."""

    type: str
    name: str
    order_id: int
    enabled: bool
    properties: Mapping[str, str]
    source: PluginSource
    configured_in: str | None = None  # "identity.xml:LINE" when an entry names it
    #: Free for the plugin to keep its state in; fresh on every (re)load, per process.
    stash: dict[str, Any] = field(default_factory=dict)
    #: State shared by every worker and kept across restarts, in the server's store
    #: (``PluginState``); the namespace is the plugin's name.
    state: PluginState = field(default_factory=lambda: PluginState(None, ""))
    #: The directory of identity.xml: relative paths in Properties are relative to it
    #: (``resolve``).
    conf_dir: Path = field(default_factory=Path.cwd)

    def require(self, name: str) -> str:
        """The ``<Property name>`` *name*; a missing one stops loading with identity.xml's
        file and line (or the note that no entry names this plugin) and the name."""
        value = self.properties.get(name)
        if value is None:
            where = "" if self.configured_in else " (no <EventListener> entry in identity.xml names it)"
            raise ValueError(f"required Property {name!r} is missing{where}")
        return value

    def resolve(self, value: str) -> Path:
        """A path from a Property: absolute as given, relative to identity.xml's directory."""
        return (self.conf_dir / value).resolve()

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "name": self.name,
            "orderId": self.order_id,
            "enabled": self.enabled,
            "wheel": self.source.wheel.name,
            "version": self.source.version,
            "sha256": self.source.sha256,
        }


class ListenerSet:
    """The loaded listeners of one configuration, and the way to call their hooks."""

    def __init__(
        self, pm: pluggy.PluginManager, listeners: list[Listener], timeout: float, types: ListenerTypes
    ):
        self.pm = pm
        self.timeout = timeout
        self.types = types
        self._all = sorted(listeners, key=lambda item: (item.type, item.order_id, item.name))
        self._enabled = {
            family: [item for item in self._all if item.type == family and item.enabled]
            for family in types.families
        }
        self._impls: dict[tuple[str, str], Any] = {}
        for hook_name in (
            *_COMMON_HOOKS,
            *types.shared_hooks,
            *(h for hooks in types.families.values() for h in hooks),
        ):
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                self._impls[impl.plugin_name, hook_name] = impl
        self._implemented = {
            hook
            for family, hooks in types.families.items()
            for hook in hooks
            for item in self._enabled[family]
            if (item.source.name, hook) in self._impls
        }
        self._declared = {
            (item.name, hook): self._declaration(item, hook, check)
            for hook, check in types.declarations.items()
            for item in self._enabled[types.family_of(hook)]
        }
        #: The enabled listeners whose type has *hook*, in calling order (looked up per request).
        self._callers = {
            hook: self._enabled[family] for family, hooks in types.families.items() for hook in hooks
        }
        self._is_async = {
            key: inspect.iscoroutinefunction(impl.function) for key, impl in self._impls.items()
        }

    def _declaration(self, item: Listener, hook_name: str, check: Callable[[Any], Any]) -> Any:
        with _plugin_code(item.source, hook_name):
            value = self._call_sync(item, hook_name, listener=item)
        try:
            return check(value)
        except ValueError as exc:
            raise ConfigError(f"{item.source.wheel}: plugin {item.name!r}: {hook_name} {exc}") from None

    def __iter__(self):
        return iter(self._all)

    def enabled(self, family: str) -> list[Listener]:
        """The enabled listeners of *family*, in calling order."""
        return self._enabled[family]

    def declared(self, listener: Listener, hook_name: str) -> Any:
        """What an enabled *listener* answered, checked, to a declaration hook at load."""
        return self._declared.get((listener.name, hook_name))

    def any_implements(self, *hook_names: str) -> bool:
        """Whether an enabled listener implements any of *hook_names*."""
        return not self._implemented.isdisjoint(hook_names)

    def implements(self, listener: Listener, hook_name: str) -> bool:
        return (listener.source.name, hook_name) in self._impls

    def fail(self, listener: Listener, hook_name: str, what: str, kind: str = "error") -> None:
        """Log a listener's misbehaviour with its name, count it (*kind*: error, timeout or
        blocked) and raise ``ServerError``."""
        metrics().listener_errors.labels(listener.name, kind).inc()
        log.error("listener %s/%s failed in %s: %s", listener.type, listener.name, hook_name, what)
        raise ServerError("an internal error occurred")

    def _args(self, impl: Any, kwargs: dict[str, Any]) -> list[Any]:
        return list(map(kwargs.__getitem__, impl.argnames))

    def call_sync(self, listener: Listener, hook_name: str, /, **kwargs: Any) -> Any:
        """Call a hook that must answer at once (configuration hooks, never per request)."""
        return self._call_sync(listener, hook_name, **kwargs)

    def _call_sync(self, listener: Listener, hook_name: str, /, **kwargs: Any) -> Any:
        impl = self._impls.get((listener.source.name, hook_name))
        if impl is None:
            return None
        result = impl.function(*self._args(impl, kwargs))
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise ConfigError(
                f"plugin {listener.name!r} ({listener.source.wheel.name}): hook {hook_name}"
                " must not be a coroutine"
            )
        return result

    async def call(self, listener: Listener, hook_name: str, /, **kwargs: Any) -> Any:
        """Call *listener*'s implementation of *hook_name*, bounded in time.

        An ``async def`` hook runs on the event loop and is awaited at most the timeout; a
        plain ``def`` hook runs in a thread (``HOOK_THREADS``), so it may block, and is
        answered at the deadline whether or not it returned. OAuth errors raised by the
        plugin pass through, and so does ``StorageError`` from the store it asked; anything else, ``BaseException`` included (``SystemExit``,
        ``KeyboardInterrupt``, ``GeneratorExit``, a ``CancelledError`` that nobody asked
        for), is logged with the plugin's name and becomes ``server_error`` for this
        request only.
        """
        key = (listener.source.name, hook_name)
        impl = self._impls.get(key)
        if impl is None:
            return None
        try:
            args = list(map(kwargs.__getitem__, impl.argnames))  # _args, without a call
            if self._is_async[key]:
                result = await _eagerly(impl.function(*args), self.timeout)
                if result is not None and inspect.isawaitable(result):
                    async with asyncio.timeout(self.timeout):
                        result = await result
            else:
                async with asyncio.timeout(self.timeout):
                    result = await asyncio.get_running_loop().run_in_executor(
                        _hook_pool(), functools.partial(_run_plain_hook, impl.function, args)
                    )
                if isinstance(result, _PlainHookFailed):
                    if result.raised:
                        metrics().listener_errors.labels(listener.name, "error").inc()
                        log.error(
                            "listener %s/%s raised in %s\n%s",
                            listener.type,
                            listener.name,
                            hook_name,
                            result.text,
                        )
                        raise ServerError("an internal error occurred")
                    self.fail(listener, hook_name, result.text)
        except (OAuth2Error, StorageError):
            # StorageError: the store the plugin asked through the request (check_secret)
            # could not answer: 503 temporarily_unavailable, not the plugin's fault.
            raise
        except TimeoutError:
            self.fail(listener, hook_name, f"no answer within {self.timeout:g} s", "timeout")
        except _Blocked as blocked:
            self.fail(
                listener,
                hook_name,
                f"held the event loop for {blocked} s without"
                " awaiting; an async def hook must not block (write it as a plain def"
                " to run it in a thread)",
                "blocked",
            )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the request itself is being cancelled: not the plugin's doing
            log.error("listener %s/%s raised CancelledError in %s", listener.type, listener.name, hook_name)
            raise ServerError("an internal error occurred") from None
        except BaseException:  # noqa: B036 - SystemExit from a hook must not stop the server
            log.exception("listener %s/%s raised in %s", listener.type, listener.name, hook_name)
            raise ServerError("an internal error occurred") from None
        return result

    async def intercept(self, hook_name: str, /, **kwargs: Any) -> list[tuple[Listener, Any]]:
        """Call *hook_name* of every enabled listener of its type in order; OAuth errors refuse."""
        results = []
        for listener in self._callers[hook_name]:
            if self.implements(listener, hook_name):
                results.append((listener, await self.call(listener, hook_name, listener=listener, **kwargs)))
        return results

    async def notify(self, hook_name: str, /, **kwargs: Any) -> None:
        """Call *hook_name* of every enabled listener of its type; failures are logged, never raised."""
        for listener in self._callers[hook_name]:
            if not self.implements(listener, hook_name):
                continue
            try:
                await self.call(listener, hook_name, listener=listener, **kwargs)
            except ServerError:
                pass  # call() logged it with the listener's name
            except OAuth2Error as error:
                log.error(
                    "listener %s/%s raised %s in %s, which cannot change the outcome",
                    listener.type,
                    listener.name,
                    error.error,
                    hook_name,
                )


class _PlainHookFailed:
    """What a plain ``def`` hook did wrong, already put into words in its thread."""

    __slots__ = ("text", "raised")

    def __init__(self, text: str, raised: bool = False):
        self.text, self.raised = text, raised


def _run_plain_hook(function: Callable[..., Any], args: list[Any]) -> Any:
    """Run a plain ``def`` hook in a hook thread, and everything its result or failure needs.

    Whatever of the plugin's could block runs here, never on the event loop: its exception is
    formatted here (a ``__str__`` may sleep), and an awaitable it returns is refused rather
    than awaited on the loop (its ``__await__`` may sleep too). OAuth errors pass through,
    and so does the store's failure (503).
    """
    try:
        result = function(*args)
    except (OAuth2Error, StorageError):
        raise
    except BaseException as exc:  # noqa: B036 - SystemExit from a hook must not stop the server
        try:
            text = "".join(traceback.format_exception(exc)).rstrip()
        except BaseException:  # noqa: B036 - even formatting it failed
            text = f"{type(exc).__name__} (which could not be formatted)"
        return _PlainHookFailed(text, raised=True)
    try:
        awaitable = inspect.isawaitable(result)
    except BaseException:  # noqa: B036
        awaitable = True
    if awaitable:
        if inspect.iscoroutine(result):
            result.close()
        return _PlainHookFailed(
            "returned an awaitable from a plain def hook; write the hook as async def to await"
        )
    return result


async def _eagerly(coro: Coroutine[Any, Any, Any], timeout: float) -> Any:
    """Run *coro* at once; only if it has to wait does it get a deadline.

    Most hook coroutines finish without waiting for anything (a lookup, a hash). Starting
    them in place and arming ``asyncio.timeout`` only when they suspend keeps the timer's
    cost, paid several times a request, off the hot path (docs/benchmarks.md), while a hook
    that hangs is still cut off after *timeout* seconds.
    """
    started = time.monotonic()
    try:
        pending = coro.send(None)
    except StopIteration as done:
        if time.monotonic() - started > timeout:
            _check_step(started, timeout)
        return done.value
    except BaseException:
        coro.close()
        raise
    try:
        _check_step(started, timeout)
    except _Blocked:
        _abandon(coro)
        raise
    async with asyncio.timeout(timeout):
        return await _Resume(coro, pending, timeout)


def _check_step(started: float, timeout: float) -> None:
    """Raise ``_Blocked`` if one step of a hook held the loop past the whole deadline.

    Nothing can interrupt code that does not await; what can be done is not to act on its
    result, and to name it in the log.
    """
    elapsed = time.monotonic() - started
    if elapsed > timeout:
        raise _Blocked(f"{elapsed:.1f}")


def _abandon(coro: Coroutine[Any, Any, Any]) -> None:
    """Close a hook coroutine that is past its deadline; one that refuses is dropped."""
    try:
        coro.close()
    except BaseException:  # noqa: B036 - "coroutine ignored GeneratorExit" and the like
        pass


class _Resume:
    """Awaitable that continues a coroutine which has already yielded *pending* once."""

    __slots__ = ("coro", "pending", "timeout")

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any, timeout: float):
        self.coro, self.pending, self.timeout = coro, pending, timeout

    def __await__(self) -> Generator[Any, None, Any]:
        pending = self.pending
        while True:
            try:
                yield pending  # the task waits on what the coroutine waits on
            except BaseException as exc:  # cancellation (the deadline) goes to the coroutine
                try:
                    self.coro.throw(exc)
                except StopIteration as done:
                    return done.value
                # It swallowed the cancellation and wants to go on: it gets no more time.
                _abandon(self.coro)
                raise
            started = time.monotonic()
            try:
                pending = self.coro.send(None)
            except StopIteration as done:
                _check_step(started, self.timeout)
                return done.value
            try:
                _check_step(started, self.timeout)
            except _Blocked:
                _abandon(self.coro)
                raise


def build_listeners(
    sources: Iterable[PluginSource],
    identity: IdentitySettings,
    types: ListenerTypes,
    storage: Storage | None = None,
) -> ListenerSet:
    """Register *sources* with a fresh plugin manager and order them by *identity*.

    *types* says which hooks there are and how they make listener types (``ListenerTypes``).
    *storage* backs each listener's ``state``; without it (checking a configuration) state
    raises ``StateUnavailableError`` when used.
    """
    pm = pluggy.PluginManager(types.project)
    pm.add_hookspecs(types.hookspecs)
    missing = [hook for hook in _COMMON_HOOKS if getattr(pm.hook, hook, None) is None]
    if missing:
        raise TypeError(f"{types.hookspecs!r} does not declare {', '.join(missing)}")
    hooks_of_type = types.families
    by_name: dict[str, PluginSource] = {}
    for source in sources:
        with _plugin_code(source, "registering"):
            try:
                pm.register(source.module, name=source.name)
            except (pluggy.PluginValidationError, ValueError) as exc:
                # ValueError: one object under two names, from two entry points
                raise ConfigError(f"{source.wheel}: plugin {source.name!r}: {exc}") from None
        _check_hookimpls(pm, source, types.load_hooks)
        by_name[source.name] = source
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise ConfigError(f"plugin {exc.plugin!r}: {exc}") from None

    def families_of(name: str) -> list[str]:
        return [
            family
            for family, hooks in hooks_of_type.items()
            if any(
                pm.get_plugin(name) in [i.plugin for i in getattr(pm.hook, h).get_hookimpls()] for h in hooks
            )
        ]

    path = identity.path
    entries = {(e.type, e.name): e for e in identity.listeners}
    for entry in identity.listeners:
        if entry.type not in hooks_of_type:
            raise ConfigError(
                f"{path}:{entry.line}: unknown listener type {entry.type!r};"
                f" known types: {', '.join(hooks_of_type)}"
            )
        if entry.name not in by_name or entry.type not in families_of(entry.name):
            if not entry.enabled:
                continue
            available = sorted(n for n in by_name if entry.type in families_of(n))
            raise ConfigError(
                f"{path}:{entry.line}: no {entry.type} plugin named {entry.name!r} in dropins;"
                f" available: {', '.join(available) or 'none'}"
            )

    listeners: list[Listener] = []
    for name, source in sorted(by_name.items()):
        families = families_of(name)
        if not families:
            raise ConfigError(
                f"{source.wheel}: plugin {name!r} implements no listener hooks"
                f" ({', '.join(h for hooks in hooks_of_type.values() for h in hooks)})"
            )
        with _plugin_code(source, "listener_default_order"):
            default = _default_order(pm, source)
        for family in families:
            configured = entries.get((family, name))
            listeners.append(
                Listener(
                    type=family,
                    name=name,
                    order_id=configured.order_id
                    if configured and configured.order_id is not None
                    else default,
                    enabled=configured.enabled if configured else True,
                    properties=MappingProxyType(dict(configured.properties) if configured else {}),
                    source=source,
                    configured_in=f"{path}:{configured.line}" if configured else None,
                    state=PluginState(storage, name),
                    conf_dir=path.parent.resolve() if path else Path.cwd(),
                )
            )

    timeout = identity.listener_timeout
    result = ListenerSet(pm, listeners, timeout, types)
    for listener in result:
        if not listener.enabled:
            continue
        try:
            result._call_sync(listener, "listener_configure", listener=listener)
        except ConfigError:
            raise
        except ValueError as exc:
            at = listener.configured_in or f"{path} ({listener.source.wheel.name})"
            raise ConfigError(f"{at}: listener {listener.name!r}: {exc}") from None
        except BaseException as exc:  # noqa: B036 - SystemExit too: see _plugin_code
            raise ConfigError(
                f"{listener.source.wheel}: listener {listener.name!r}: listener_configure"
                f" raised {type(exc).__name__}: {exc}"
            ) from None
    return result


def _check_hookimpls(pm: pluggy.PluginManager, source: PluginSource, load_hooks: frozenset[str]) -> None:
    """Refuse *source* if one of its hook implementations could not run as it is written.

    pluggy checks the arguments against the spec; this checks what pluggy accepts but this
    host would not honour, so that the plugin's author hears of it at load, in one line.
    """
    plugin = pm.get_plugin(source.name)
    for caller in pm.get_hookcallers(plugin) or ():
        if caller.spec is None and not any(i.optionalhook for i in caller.get_hookimpls()):
            continue  # an unknown hook: check_pending names it
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin:
                problem = _hookimpl_problem(impl, caller.name in load_hooks)
                if problem:
                    raise ConfigError(
                        f"{source.wheel}: plugin {source.name!r}: hook {caller.name}: {problem}"
                    )


def _hookimpl_problem(impl: Any, load_hook: bool) -> str | None:
    """What is wrong with one hook implementation, in words for its author, or ``None``."""
    options = [option for option in UNSUPPORTED_HOOKIMPL_OPTIONS if getattr(impl, option, False)]
    if options:
        return (
            f"@hookimpl({', '.join(f'{option}=True' for option in options)}) is not supported:"
            " listeners are called one at a time in orderId order (set it in identity.xml)"
        )
    function = impl.function
    if inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function):
        return "is a generator function; a hook returns its result"
    if load_hook and inspect.iscoroutinefunction(function):
        return "must not be a coroutine (async def): it is called while the plugin loads"
    return None


def _default_order(pm: pluggy.PluginManager, source: PluginSource) -> int:
    for impl in pm.hook.listener_default_order.get_hookimpls():
        if impl.plugin_name == source.name:
            value = impl.function()
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(
                    f"{source.wheel}: plugin {source.name!r}: listener_default_order must"
                    f" return an int, not {type(value).__name__}"
                )
            return value
    return DEFAULT_ORDER
