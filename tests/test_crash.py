"""kill -9 under load: no token a client received is lost, and the database stays consistent."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time

import httpx

from conftest import start_server


def test_kill_9_under_load_loses_no_issued_token(deployment, capsys) -> None:  # noqa: ANN001
    """Every access token answered with 200 before a SIGKILL introspects as active after restart."""
    client = deployment.add_client("load", "--grant-type", "client_credentials", "--auth-method",
                                   "client_secret_basic")
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
                    response = http.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=auth)
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
            inactive = [value for value in issued if not http.post(
                "/oauth2/introspect", data={"token": value}, auth=auth).json()["active"]]
    finally:
        restarted.stop()
    with capsys.disabled():
        print(f"\nkill -9 under load: {len(issued)} tokens answered 200, {stored} rows stored,"
              f" {len(failures)} requests failed by the kill, {len(inactive)} lost")
    assert inactive == []
    assert stored >= len(issued)
