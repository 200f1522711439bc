#!/usr/bin/env python3
"""Which of tokensmith's files one token request passes through, in process.

    .venv/bin/python bench/trace_path.py [--mtls] [--sequence]

Builds a throwaway deployment in a temporary directory (the bench's identity.xml: the
bundled authenticators, from this tree's dropins/; SQLite; no <AccessLog> element, as the
bench's scenarios run), registers one ``client_credentials`` client, and calls the ASGI app
with a token request as Hypercorn hands it over on a keep-alive TLS connection: with HTTP
Basic (``client_secret_basic``), or with ``--mtls`` a self-signed client certificate in the
TLS extension (``self_signed_tls_client_auth``). The first request warms the caches (the
secret's KDF run, the client cache, the label caches); the second is traced with
``sys.setprofile`` from the ASGI call to its last response message, the group commit the
request waits for included.

It prints every module of core/tokensmith/ and plugins/ the request entered, with the number
of calls into it, and the number of moves: the times the code running, counted only in those
files, switched from one file to another (a call into another file, or a return to a caller
in another file; a coroutine resumed after a wait re-enters each file of its await chain,
and each such entry that changes the file counts). ``--sequence`` prints the moves themselves.
Module-level code of a file (its import) is not a request's and is not seen here: the
modules are imported before the trace starts. Only the event loop's thread is traced: a plain
``def`` hook, which runs in a hook thread, does not appear.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import io
import json
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core" / "tokensmith"
PLUGINS = ROOT / "plugins"

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The bench harness's deployment files: the same server.xml (SQLite, one connector that asks
# for client certificates) and identity.xml (the three bundled authenticators).
from harness.servers import IDENTITY_XML  # noqa: E402
from harness.servers import SERVER_XML as _SERVER_XML  # noqa: E402

SERVER_XML = _SERVER_XML.format(http1="", database='<Database path="../var/tokensmith.db"/>')


def _self_signed(directory: Path) -> tuple[Path, bytes, str]:
    """A self-signed client certificate, as the bench's clients have: its PEM file, its DER
    and its PEM text."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from peers.gen_clients import self_signed

    now = datetime.datetime.now(datetime.UTC)
    cert = self_signed(
        ec.generate_private_key(ec.SECP256R1()),
        "trace-client",
        1,
        now - datetime.timedelta(days=1),
        now + datetime.timedelta(days=30),
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    path = directory / "client.crt"
    path.write_bytes(pem)
    return path, cert.public_bytes(serialization.Encoding.DER), pem.decode()


def deployment(root: Path, mtls: bool) -> tuple[Path, dict[str, Any], tuple[bytes, str] | None]:
    """A deployment under *root* and one registered client: conf dir, `sp add` output, cert."""
    from tokensmith.cli import main

    conf = root / "conf"
    (conf / "security").mkdir(parents=True)
    (root / "dropins").mkdir()
    (root / "var").mkdir()
    for name in ("server.crt", "server.key"):
        shutil.copy(ROOT / "conf" / "security" / name, conf / "security" / name)
    (conf / "server.xml").write_text(SERVER_XML)
    (conf / "identity.xml").write_text(IDENTITY_XML)
    for wheel in sorted((ROOT / "dropins").glob("*.whl")):
        shutil.copy(wheel, root / "dropins")
    args = ["sp", "add", "trace", "--grant-type=client_credentials"]
    cert = None
    if mtls:
        path, der, pem = _self_signed(root)
        args += ["--auth-method=self_signed_tls_client_auth", f"--cert={path}"]
        cert = (der, pem)
    else:
        args.append("--auth-method=client_secret_basic")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        if main([*args, "--conf", str(conf)]) != 0:
            raise SystemExit("tokensmith sp add failed")
    return conf, json.loads(out.getvalue()), cert


def token_scope(client: dict[str, Any], cert: tuple[bytes, str] | None) -> tuple[dict[str, Any], bytes]:
    """The ASGI scope and body of a token request, as Hypercorn gives them on a TLS connection."""
    # The scope keys' values, which the flat layout before the restructure had too.
    DER_KEY, TIMEOUT_KEY = "tokensmith.client_cert_der", "tokensmith.timeout"

    if cert is None:
        body = b"grant_type=client_credentials"
        raw = f"{client['client_id']}:{client['client_secret']}".encode()
        extra = [(b"authorization", b"Basic " + base64.b64encode(raw))]
        tls: dict[str, Any] = {"client_cert_chain": [], "tls_version": 0x0304}
    else:
        body = f"grant_type=client_credentials&client_id={client['client_id']}".encode()
        extra = []
        tls = {"client_cert_chain": [cert[1]], DER_KEY: [cert[0]], "tls_version": 0x0304}
    headers = [
        (b"host", b"127.0.0.1:9443"),
        (b"content-type", b"application/x-www-form-urlencoded"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "https",
        "path": "/oauth2/token",
        "raw_path": b"/oauth2/token",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 9443),
        "extensions": {"tls": tls, TIMEOUT_KEY: 10.0},
    }
    return scope, body


async def request(app: Any, scope: dict[str, Any], body: bytes) -> list[dict[str, Any]]:
    """Call the ASGI *app* with one request; return the messages it sent."""
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client keeps the connection open
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(
        dict(scope, extensions={**scope["extensions"], "tls": dict(scope["extensions"]["tls"])}),
        receive,
        send,
    )
    return sent


def _ours(filename: str) -> str | None:
    """*filename* relative to the tree when it is a tokensmith or plugin source, else None."""
    path = Path(filename)
    for base in (CORE, PLUGINS):
        if path.is_relative_to(base):
            return str(path.relative_to(ROOT))
    if path.name.startswith("tokensmith_") and "site-packages" not in path.parts:
        return f"plugins/{path.parent.name}/{path.name}"  # a plugin unpacked from dropins/
    return None


class Trace:
    """Records which of our files is running on the traced thread, the event loop's (work a
    hook hands to another thread is not seen, nor counted)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.moves: list[tuple[str, str, str]] = []
        #: Moves by a call (the others return to a caller in another file).
        self.crossing_calls = 0
        self.current: str | None = None
        self.names: dict[str, str | None] = {}

    def _file(self, code: Any) -> str | None:
        name = self.names.get(code.co_filename, "")
        if name == "":
            name = self.names[code.co_filename] = _ours(code.co_filename)
        return name

    def _at(self, name: str | None, how: str) -> None:
        if name is None:
            return
        if self.current is not None and name != self.current:
            self.moves.append((self.current, name, how))
        self.current = name

    def __call__(self, frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            name = self._file(frame.f_code)
            if name is not None:
                self.calls[name] += 1
                self.crossing_calls += self.current is not None and name != self.current
            self._at(name, f"calls {frame.f_code.co_name}")
        elif event == "return" and frame.f_back is not None:
            back = frame.f_back.f_code
            self._at(self._file(back), f"returns from {frame.f_code.co_name} to {back.co_name}")


def _unpacked_plugins() -> Iterator[tuple[str, str]]:
    """Plugin modules loaded from dropins/, mapped to their source in plugins/."""
    for name, module in list(sys.modules.items()):
        if name.startswith("tokensmith_") and getattr(module, "__file__", None):
            yield module.__file__, f"plugins/{name.removeprefix('tokensmith_')}/{name}.py"


def app_factory() -> tuple[Any, Any]:
    """``create_app`` and ``load_config``, in this tree's layout or the flat one before it."""
    import importlib

    flat = importlib.import_module("tokensmith.app")
    if hasattr(flat, "create_app"):
        from tokensmith.config import load_config  # type: ignore[attr-defined]

        return flat.create_app, load_config
    from tokensmith.app.factory import create_app as create
    from tokensmith.config.settings import load_config as load

    return create, load


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mtls", action="store_true", help="self_signed_tls_client_auth instead of Basic")
    parser.add_argument("--sequence", action="store_true", help="print every move between files")
    args = parser.parse_args()

    create_app, load_config = app_factory()

    with tempfile.TemporaryDirectory(prefix="trace-path-") as tmp:
        conf, client, cert = deployment(Path(tmp), args.mtls)
        app = create_app(load_config(conf))
        scope, body = token_scope(client, cert)
        loop = asyncio.new_event_loop()
        test_app = app.test_app()
        loop.run_until_complete(test_app.__aenter__())
        try:
            for _ in range(3):  # warm: the KDF run, the caches
                sent = loop.run_until_complete(request(app, scope, body))
            assert sent[0]["status"] == 200, sent
            trace = Trace()
            trace.names.update({path: name for path, name in _unpacked_plugins()})
            sys.setprofile(trace)
            try:
                sent = loop.run_until_complete(request(app, scope, body))
            finally:
                sys.setprofile(None)
            status = sent[0]["status"]
        finally:
            loop.run_until_complete(test_app.__aexit__(None, None, None))
            loop.close()

    kind = "self_signed_tls_client_auth" if args.mtls else "client_secret_basic"
    print(f"one client_credentials request, {kind}: status {status}")
    core = sorted(name for name in trace.calls if name.startswith("core/"))
    plugins = sorted(name for name in trace.calls if not name.startswith("core/"))
    for name in core + plugins:
        print(f"  {trace.calls[name]:5d} calls  {name}")
    print(f"modules entered: {len(core)} core + {len(plugins)} plugins")
    print(f"moves between files: {len(trace.moves)} ({trace.crossing_calls} by a call, the rest by a return)")
    if args.sequence:
        for source, target, how in trace.moves:
            print(f"  {source} -> {target}: {how}")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
