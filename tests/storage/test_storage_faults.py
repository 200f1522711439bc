"""Storage that cannot be written while the server runs: a full disk, an unwritable database.

Both faults are made by the kernel, not by mocks. For a full disk the deployment's var/ is a
small tmpfs, filled up with a ballast file once the server runs, so that SQLite's writes get
ENOSPC. For an unwritable database the database file and its WAL get the immutable attribute
(``chattr +i``): the kernel then refuses every write with EPERM, to root too and through the
descriptors the server opened before. Plainer ways do not work: the tests run as root, whom
file modes do not stop, permissions are checked only when a file is opened, and a read-only
remount is refused (EBUSY) while the server holds the database open for writing.

Either way a token request must get 503 ``temporarily_unavailable`` and no token, other
requests must still be judged (a wrong secret stays 401), and the first request after the
fault is removed must succeed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import struct
import subprocess
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import httpx
import pki
import pytest
from conftest import Deployment, Server, start_server

PASSWORD = "a long passphrase"

# linux/fs.h: _IOR('f', 1, long), _IOW('f', 2, long); the kernel reads and writes an int.
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_IMMUTABLE_FL = 0x80086601, 0x40086602, 0x10

#: How many token requests a full disk may still absorb before the store runs out of room:
#: SQLite reuses WAL space it already has until a checkpoint needs to grow the database.
ABSORBED = 300


@dataclass
class Env:
    """A running server whose store is about to fail, and its clients."""

    server: Server
    basic: tuple[str, str]
    api: tuple[str, str]
    mtls_id: str
    mtls: pki.Pair
    mtls_files: tuple[Path, Path]


def register(dep: Deployment, tmp_path: Path) -> dict[str, object]:
    """A client_secret_basic client, a password and refresh client with a user, and a
    self_signed_tls_client_auth client."""
    basic = dep.add_client(
        "basic",
        "--grant-type",
        "client_credentials",
        "--resource-server",
        "--auth-method",
        "client_secret_basic",
    )
    api = dep.add_client(
        "api",
        "--grant-type",
        "password",
        "--grant-type",
        "refresh_token",
        "--auth-method",
        "client_secret_basic",
    )
    dep.cli("user", "add", "alice", "--password-stdin", input=PASSWORD + "\n")
    pair = pki.self_signed("storage-fault-client")
    files = pair.write(tmp_path / "certs", "mtls")
    mtls = dep.add_client(
        "mtls",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "self_signed_tls_client_auth",
        "--cert",
        str(files[0]),
    )
    return {
        "basic": (basic["client_id"], basic["client_secret"]),
        "api": (api["client_id"], api["client_secret"]),
        "mtls_id": mtls["client_id"],
        "mtls": pair,
        "mtls_files": files,
    }


def set_immutable(path: Path, on: bool) -> None:
    """Set or clear the immutable attribute of *path*, as ``chattr +i`` / ``chattr -i`` do."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        flags = struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, bytes(4)))[0]
        flags = flags | FS_IMMUTABLE_FL if on else flags & ~FS_IMMUTABLE_FL
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags))
    finally:
        os.close(fd)


def immutable_unsupported(directory: Path) -> str | None:
    """Why the immutable attribute cannot stop an open descriptor's writes here, or None."""
    probe = directory / "immutable-probe"
    fd = os.open(probe, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            set_immutable(probe, True)
        except OSError as exc:
            return f"cannot set the immutable attribute in {directory}: {exc}"
        try:
            os.pwrite(fd, b"x", 0)
            return f"the filesystem of {directory} lets open descriptors write to immutable files"
        except PermissionError:
            return None
        finally:
            set_immutable(probe, False)
    finally:
        os.close(fd)
        probe.unlink()


def fill(directory: Path) -> Path:
    """Write a ballast file into *directory* until its filesystem has no room left."""
    ballast = directory / "ballast"
    with ballast.open("wb", buffering=0) as out:
        for chunk in (1 << 20, 4096, 1):
            try:
                while True:
                    out.write(bytes(chunk))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    assert os.statvfs(directory).f_bavail == 0
    return ballast


@pytest.fixture
def small_disk(deployment, tmp_path) -> Iterator[tuple[Env, Path]]:  # noqa: ANN001
    """The server with its var/ on a 32 MiB tmpfs; stopped, then unmounted, whatever happens."""
    var = deployment.database.parent
    var.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "tokensmith-test", str(var)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs for a full disk (needs root with CAP_SYS_ADMIN): {mounted.stderr.strip()}"
        )
    server = None
    try:
        clients = register(deployment, tmp_path)
        server = start_server(deployment)
        yield Env(server, **clients), var  # type: ignore[arg-type]
    finally:
        if server is not None:
            server.stop()
        if subprocess.run(["umount", str(var)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(var)], check=True)


@pytest.fixture
def immutable_env(deployment, tmp_path) -> Iterator[tuple[Env, list[Path]]]:  # noqa: ANN001
    """The server, and the database files to make immutable; they are made mutable again and
    the server stopped whatever happens."""
    if (reason := immutable_unsupported(deployment.root)) is not None:
        pytest.skip(reason)
    files = [deployment.database, deployment.database.with_name(deployment.database.name + "-wal")]
    server = None
    try:
        clients = register(deployment, tmp_path)
        server = start_server(deployment)
        yield Env(server, **clients), files  # type: ignore[arg-type]
    finally:
        for path in files:
            if path.exists():
                set_immutable(path, False)
        if server is not None:
            server.stop()


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["error"] == "temporarily_unavailable"
    assert "access_token" not in response.text and "refresh_token" not in response.text


def count_tokens(database: Path) -> int:
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return db.execute("SELECT count(*) FROM tokens").fetchone()[0]


def fails_closed_and_recovers(env: Env, inject: Callable[[], None], remove: Callable[[], None]) -> int:
    """Run the fault: 503s and no tokens while it lasts, 200s once it is gone.

    Returns how many token requests were still answered 200 after *inject*; each of them
    must have been stored, which is checked by introspecting them after the fault.
    """
    server = env.server
    mtls_form = {"grant_type": "client_credentials", "client_id": env.mtls_id}
    with server.client() as http, server.client(cert=env.mtls_files) as mtls:
        first = http.post(
            "/oauth2/token",
            data={"grant_type": "password", "username": "alice", "password": PASSWORD},
            auth=env.api,
        )
        assert first.status_code == 200, first.text
        refresh = first.json()["refresh_token"]
        issued = [first.json()["access_token"]]
        assert mtls.post("/oauth2/token", data=mtls_form).status_code == 200
        stored = count_tokens(server.deployment.database)

        inject()
        try:
            for absorbed in range(ABSORBED + 1):  # noqa: B007 (read after the loop)
                response = http.post(
                    "/oauth2/token", data={"grant_type": "client_credentials"}, auth=env.basic
                )
                if response.status_code != 200:
                    break
                issued.append(response.json()["access_token"])
            assert_unavailable(response)
            assert_unavailable(mtls.post("/oauth2/token", data=mtls_form))
            assert_unavailable(
                http.post(
                    "/oauth2/token",
                    data={"grant_type": "refresh_token", "refresh_token": refresh},
                    auth=env.api,
                )
            )
            wrong = http.post(
                "/oauth2/token",
                data={"grant_type": "client_credentials"},
                auth=(env.basic[0], "not the secret"),
            )
            assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
            assert server.process.poll() is None
        finally:
            remove()

        # Nothing was stored for the refused requests: only the tokens answered 200.
        assert count_tokens(server.deployment.database) == stored + absorbed
        response = http.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=env.basic)
        assert response.status_code == 200, response.text
        bound = mtls.post("/oauth2/token", data=mtls_form)
        assert bound.status_code == 200, bound.text
        introspected = http.post(
            "/oauth2/introspect", data={"token": bound.json()["access_token"]}, auth=env.basic
        )
        assert introspected.json()["cnf"] == {"x5t#S256": env.mtls.x5t_s256()}
        # The refused exchange did not use the refresh token up: it works once, now.
        renewed = http.post(
            "/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": refresh}, auth=env.api
        )
        assert renewed.status_code == 200, renewed.text
        inactive = [
            value
            for value in issued
            if not http.post("/oauth2/introspect", data={"token": value}, auth=env.basic).json()["active"]
        ]
        assert inactive == []
    assert "storage unavailable" in server.log()
    return absorbed


def test_full_disk_fails_closed_with_503_and_recovers(small_disk) -> None:  # noqa: ANN001
    """With var/ full (ENOSPC), token requests get 503 and no token once SQLite cannot write,
    every 200 before that was stored, and the first request after space is freed succeeds."""
    env, var = small_disk
    ballast: list[Path] = []
    absorbed = fails_closed_and_recovers(env, lambda: ballast.append(fill(var)), lambda: ballast[0].unlink())
    assert "database or disk is full" in env.server.log()
    print(f"\nfull disk: {absorbed} token requests answered 200 (and stored) before the first 503")


def test_unwritable_database_fails_closed_with_503_and_recovers(immutable_env) -> None:  # noqa: ANN001
    """With the database and its WAL immutable (EPERM on every write, root included), a token
    request gets 503 and no token at once, and the first request after it is lifted succeeds."""
    env, files = immutable_env

    def inject() -> None:
        assert all(path.exists() for path in files), files
        for path in files:
            set_immutable(path, True)

    def remove() -> None:
        for path in files:
            set_immutable(path, False)

    assert fails_closed_and_recovers(env, inject, remove) == 0
    assert "disk I/O error" in env.server.log()
