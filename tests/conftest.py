"""Shared fixtures: real plugin wheels, real configuration directories, the real server.

The server is started as a user starts it, ``tokensmith serve --conf DIR``, in a subprocess,
bound to 127.0.0.1 on a port the kernel picks; every fixture stops what it starts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pg
import pytest
from tokensmith.listeners.wheelbuild import build_plugin
from tokensmith.security.keystore import generate_dev_keystore

# Servers shared by the files of one behaviour (tests/servers.py).
pytest_plugins = ["servers", "browser"]

ROOT = Path(__file__).resolve().parent.parent
TOKENSMITH = str(Path(sys.executable).with_name("tokensmith"))
BUNDLED = ("basic_auth", "post_body_auth", "mutual_tls")

SERVER_XML = """<?xml version="1.0" encoding="UTF-8"?>
<Server>
    <Keystore certificateFile="security/server.crt" keyFile="security/server.key"/>
    {connectors}
    {database}
    <Dropins path="../dropins"/>
</Server>
"""

IDENTITY_XML = """<?xml version="1.0" encoding="UTF-8"?>
<Identity>
    <OAuth>{oauth}</OAuth>
    <EventListeners>
{listeners}
    </EventListeners>
</Identity>
"""

#: A third-party authenticator that appends its name to the file in its ``trace`` property
#: whenever it is asked, and never engages. Format with name= and order=.
TRACER = textwrap.dedent("""
    from pathlib import Path
    from tokensmith import hookimpl

    @hookimpl
    def listener_default_order():
        return {order}

    @hookimpl
    def client_auth_methods():
        return ["{name}_method"]

    @hookimpl
    def listener_configure(listener):
        if "trace" not in listener.properties:
            raise ValueError("the trace property is required")

    @hookimpl
    async def authenticate_client(request, listener):
        with open(listener.properties["trace"], "a") as out:
            out.write("{name}\\n")
        return None
""")


DEFAULT_LISTENERS = """\
        <EventListener type="ClientAuthenticator" name="basic_auth" orderId="100" enable="true"/>
        <EventListener type="ClientAuthenticator" name="post_body_auth" orderId="110" enable="true"/>
        <EventListener type="ClientAuthenticator" name="mutual_tls" orderId="158" enable="true"/>"""


@pytest.fixture(scope="session")
def wheel_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled plugins, built into wheels for real once per test session."""
    out = tmp_path_factory.mktemp("bundled-wheels")
    for name in BUNDLED:
        build_plugin(ROOT / "plugins" / name, out)
    return out


@pytest.fixture(scope="session")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A development keystore, generated once per session."""
    directory = tmp_path_factory.mktemp("keystore")
    generate_dev_keystore(directory / "server.crt", directory / "server.key")
    return directory


@dataclass
class Deployment:
    """A tokensmith installation in a temporary directory: conf/, dropins/, var/."""

    root: Path
    keystore: Path
    connectors: str = '<Connector address="127.0.0.1" port="0" clientAuth="want"/>'
    listeners: str = DEFAULT_LISTENERS
    oauth: str = ""
    #: The <Database> element: SQLite in var/ unless a test names a PostgreSQL URL.
    database_xml: str = '<Database path="../var/tokensmith.db"/>'

    @property
    def conf(self) -> Path:
        return self.root / "conf"

    @property
    def dropins(self) -> Path:
        return self.root / "dropins"

    @property
    def database(self) -> Path:
        return self.root / "var" / "tokensmith.db"

    @property
    def server_cert(self) -> Path:
        return self.conf / "security" / "server.crt"

    def write(self) -> None:
        (self.conf / "security").mkdir(parents=True, exist_ok=True)
        self.dropins.mkdir(exist_ok=True)
        for name in ("server.crt", "server.key"):
            target = self.conf / "security" / name
            if not target.exists():
                shutil.copy(self.keystore / name, target)
        (self.conf / "server.xml").write_text(
            SERVER_XML.format(connectors=self.connectors, database=self.database_xml)
        )
        (self.conf / "identity.xml").write_text(
            IDENTITY_XML.format(oauth=self.oauth, listeners=self.listeners)
        )

    def cli(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``tokensmith ARGS --conf CONF`` as a user would."""
        result = subprocess.run(
            [TOKENSMITH, *args, "--conf", str(self.conf)],
            capture_output=True,
            text=True,
            input=input,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"tokensmith {' '.join(args)} failed: {result.stderr}")
        return result

    def add_client(self, *args: str) -> dict[str, object]:
        return json.loads(self.cli("sp", "add", *args).stdout)


def new_deployment(root: Path, keystore: Path, wheel_cache: Path, **settings: str) -> Deployment:
    """A deployment under *root* with the bundled plugin wheels in its dropins/."""
    dep = Deployment(root, keystore, **settings)
    dep.write()
    for wheel in wheel_cache.glob("*.whl"):
        shutil.copy(wheel, dep.dropins)
    return dep


@pytest.fixture
def deployment(tmp_path: Path, keystore: Path, wheel_cache: Path) -> Deployment:
    """A deployment with the bundled plugin wheels in its dropins/."""
    return new_deployment(tmp_path / "ts", keystore, wheel_cache)


@dataclass
class Server:
    """A running ``tokensmith serve`` process."""

    process: subprocess.Popen[str]
    urls: list[str]
    deployment: Deployment
    stdout_lines: list[str] = field(default_factory=list)
    log_path: Path | None = None
    reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.urls[0]

    def client(
        self, cert: tuple[Path, Path] | None = None, url: str | None = None, **kwargs: object
    ) -> httpx.Client:
        """An HTTPS client that trusts the server, presenting *cert* (PEM, key) if given."""
        context = ssl.create_default_context(cafile=str(self.deployment.server_cert))
        if cert is not None:
            context.load_cert_chain(*cert)
        return httpx.Client(base_url=url or self.url, verify=context, timeout=10, **kwargs)  # type: ignore[arg-type]

    def raw_tls(self, cert: tuple[Path, Path] | None = None, timeout: float = 20) -> ssl.SSLSocket:
        """A TLS socket to the first connector speaking HTTP/1.1, for requests no client sends."""
        parsed = urllib.parse.urlsplit(self.url)
        context = ssl.create_default_context(cafile=str(self.deployment.server_cert))
        context.set_alpn_protocols(["http/1.1"])
        if cert is not None:
            context.load_cert_chain(*cert)
        raw = socket.create_connection((parsed.hostname, parsed.port), timeout=timeout)
        return context.wrap_socket(raw, server_hostname="127.0.0.1")

    def log(self) -> str:
        assert self.log_path is not None
        return self.log_path.read_text()

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 30) -> None:
        """Wait until *text* appears *count* times in the server's log."""
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(f"{text!r} x{count} not logged; log:\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.reader is not None:
            self.reader.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode


class StartupFailed(Exception):
    """The server exited before it served; ``args[0]`` is its stderr."""


def start_server(dep: Deployment, *args: str, timeout: float = 30) -> Server:
    """Start ``tokensmith serve ARGS`` for *dep* and wait until it prints its URLs."""
    log_path = dep.root / f"server-{time.monotonic_ns()}.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [TOKENSMITH, "serve", "--conf", str(dep.conf), *args],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    server = Server(process, [], dep, log_path=log_path)
    assert process.stdout is not None
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            server.stdout_lines.append(line.rstrip("\n"))
            if line.startswith("tokensmith serving "):
                server.urls.append(line.split()[2].removesuffix("/oauth2/token"))
                if len(server.urls) == dep.connectors.count("<Connector"):
                    ready.set()
        ready.set()

    server.reader = threading.Thread(target=read, daemon=True)
    server.reader.start()
    if not ready.wait(timeout) or process.poll() is not None or not server.urls:
        server.stop()
        raise StartupFailed(log_path.read_text())
    return server


@pytest.fixture
def serve() -> Iterator:
    """Start servers for deployments; stop them all at the end of the test."""
    started: list[Server] = []

    def _serve(dep: Deployment, *args: str) -> Server:
        server = start_server(dep, *args)
        started.append(server)
        return server

    yield _serve
    for server in started:
        server.stop()


@pytest.fixture
def server(deployment: Deployment, serve) -> Server:  # noqa: ANN001
    """The server of the default deployment, running."""
    return serve(deployment)


PLUGIN_PYPROJECT = """[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "{version}"
requires-python = ">=3.11"
dependencies = {dependencies}

[project.entry-points.tokensmith]
{entry_points}

[tool.setuptools]
py-modules = ["{module}"]
"""


@pytest.fixture(scope="session")
def make_wheel(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """Build a third-party plugin wheel for real from a module's source text."""
    counter = iter(range(10_000))

    def _make(
        module: str,
        code: str,
        *,
        entry_points: dict[str, str] | None = None,
        dist: str | None = None,
        version: str = "1.0",
        dependencies: tuple[str, ...] = ("tokensmith",),
    ) -> Path:
        source = tmp_path_factory.mktemp("plugin-src") / f"src{next(counter)}"
        source.mkdir()
        eps = entry_points or {module: module}
        (source / "pyproject.toml").write_text(
            PLUGIN_PYPROJECT.format(
                dist=dist or module.replace("_", "-"),
                version=version,
                module=module,
                dependencies=json.dumps(list(dependencies)),
                entry_points="\n".join(f'{k} = "{v}"' for k, v in eps.items()),
            )
        )
        (source / f"{module}.py").write_text(code)
        wheel, _ = build_plugin(source, tmp_path_factory.mktemp("plugin-wheel"))
        return wheel

    return _make


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL of an empty PostgreSQL schema of its own (see tests/pg.py); skips the test when
    TOKENSMITH_TEST_POSTGRES_URL is not set."""
    url = pg.base_url()
    if url is None:
        pytest.skip(pg.SKIPPED)
    with pg.fresh_schema(url) as schema_url:
        yield schema_url


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    """Opens stores of one backend on one database (each call: another worker, instance or
    the CLI); the storage contract tests run once per backend. ``open_store.kind`` names it,
    ``open_store.location`` is the SQLite path or the PostgreSQL URL."""
    from tokensmith.storage.postgres import PostgresStorage
    from tokensmith.storage.sqlite import SQLiteStorage

    location: Path | str
    if request.param == "sqlite":
        location = tmp_path / "store.db"
    else:
        location = request.getfixturevalue("postgres_url")
    opened: list = []

    def _open():  # noqa: ANN202
        store = SQLiteStorage(location) if isinstance(location, Path) else PostgresStorage(location)
        opened.append(store)
        return store

    _open.kind = request.param  # type: ignore[attr-defined]
    _open.location = location  # type: ignore[attr-defined]
    yield _open
    for store in opened:
        store.close()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    """One line when the PostgreSQL tests were skipped, saying why and how to run them."""
    skipped = terminalreporter.stats.get("skipped", [])
    if any(pg.SKIPPED in str(getattr(report, "longrepr", "")) for report in skipped):
        terminalreporter.write_line(pg.SKIPPED)
