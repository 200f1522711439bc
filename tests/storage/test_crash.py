"""kill -9 under load: no token a client received is lost, and the database stays consistent."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
from conftest import start_server
from tokensmith.oauth.grants import token_hash


def test_kill_9_under_load_loses_no_issued_token(deployment, capsys) -> None:  # noqa: ANN001
    """Every access token answered with 200 before a SIGKILL introspects as active after restart."""
    client = deployment.add_client(
        "load", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic"
    )
    auth = (client["client_id"], client["client_secret"])
    server = start_server(deployment)
    issued: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load() -> None:
        with server.client() as http:
            while not stop.is_set():
                try:
                    response = http.post(
                        "/oauth2/token", data={"grant_type": "client_credentials"}, auth=auth
                    )
                except httpx.HTTPError as exc:
                    with lock:
                        failures.append(type(exc).__name__)
                    if server.process.poll() is not None:
                        return
                    continue
                if response.status_code == 200:
                    with lock:
                        issued.append(response.json()["access_token"])

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)
    stop.set()
    for thread in threads:
        thread.join(30)
    server.stop()
    assert len(issued) > 20, "the load did not get going"

    with sqlite3.connect(deployment.database) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = db.execute("SELECT count(*) FROM tokens").fetchone()[0]
    restarted = start_server(deployment)
    try:
        with restarted.client() as http:
            inactive = [
                value
                for value in issued
                if not http.post("/oauth2/introspect", data={"token": value}, auth=auth).json()["active"]
            ]
    finally:
        restarted.stop()
    with capsys.disabled():
        print(
            f"\nkill -9 under load: {len(issued)} tokens answered 200, {stored} rows stored,"
            f" {len(failures)} requests failed by the kill, {len(inactive)} lost"
        )
    assert inactive == []
    assert stored >= len(issued)


def test_kill_9_during_refresh_chains_leaves_each_usable(deployment) -> None:  # noqa: ANN001
    """Clients refreshing in a loop under --workers 2, then SIGKILL: no chain is left with its
    refresh token used and no successor stored, and after the restart each unused one works.
    The old refresh token is marked used in the transaction that stores its successor.

    A chain whose last exchange committed but whose answer the kill swallowed holds a used
    token with a stored successor it never saw: nothing a server can store fixes that one
    (the client must start a new grant), so it is only checked to have its successor."""
    client = deployment.add_client(
        "chains",
        "--grant-type",
        "password",
        "--grant-type",
        "refresh_token",
        "--auth-method",
        "client_secret_basic",
    )
    deployment.cli("user", "add", "alice", "--password-stdin", input="a long passphrase\n")
    auth = (client["client_id"], client["client_secret"])
    server = start_server(deployment, "--workers", "2")
    latest: dict[int, str] = {}
    refreshed = [0]
    stop = threading.Event()

    with server.client() as http:
        for number in range(10):
            latest[number] = http.post(
                "/oauth2/token",
                auth=auth,
                data={"grant_type": "password", "username": "alice", "password": "a long passphrase"},
            ).json()["refresh_token"]

    def chain(number: int) -> None:
        with server.client() as http:
            while not stop.is_set():
                try:
                    response = http.post(
                        "/oauth2/token",
                        auth=auth,
                        data={"grant_type": "refresh_token", "refresh_token": latest[number]},
                    )
                except httpx.HTTPError:
                    return  # killed: the client keeps the last token it was given
                if response.status_code != 200:
                    return
                latest[number] = response.json()["refresh_token"]
                refreshed[0] += 1

    threads = [threading.Thread(target=chain, args=(n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    pid = server.process.pid
    workers = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for child in [pid, *map(int, workers)]:  # the supervisor and its workers, all at once
        os.kill(child, signal.SIGKILL)
    server.process.wait(10)
    stop.set()
    for thread in threads:
        thread.join(30)
    server.stop()
    assert len(latest) == 10 and refreshed[0] > 20, "the load did not get going"
    unused = []
    with sqlite3.connect(deployment.database) as db:
        for value in latest.values():
            used, grant = db.execute(
                "SELECT used, grant_id FROM tokens WHERE token_hash = ?", (token_hash(value),)
            ).fetchone()
            if not used:
                unused.append(value)
                continue
            successors = db.execute(
                "SELECT count(*) FROM tokens WHERE grant_id = ? AND kind = 'refresh' AND used = 0", (grant,)
            ).fetchone()[0]
            assert successors == 1, "a used refresh token without a successor"
    restarted = start_server(deployment)
    try:
        with restarted.client() as http:
            statuses = [
                http.post(
                    "/oauth2/token", auth=auth, data={"grant_type": "refresh_token", "refresh_token": value}
                ).status_code
                for value in unused
            ]
    finally:
        restarted.stop()
    assert statuses == [200] * len(unused)
