"""Files at rest: the database and the directories holding keys or data are private,
whatever the umask of whoever created them."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import TOKENSMITH, start_server


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_database_and_key_directories_are_private(deployment, umask) -> None:  # noqa: ANN001
    """keystore init, signing rotate, sp add and serve under the given umask: the database,
    its -wal and -shm are 0600; conf/security, its signing keyring and var/ are 0700."""
    shutil.rmtree(deployment.conf / "security")

    def cli(*args: str) -> None:
        subprocess.run(
            [TOKENSMITH, *args, "--conf", str(deployment.conf)],
            check=True,
            capture_output=True,
            timeout=60,
            umask=umask,
        )

    cli("keystore", "init")
    cli("signing", "rotate")
    cli("sp", "add", "demo", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic")
    old = os.umask(umask)
    try:
        server = start_server(deployment)
    finally:
        os.umask(old)
    try:
        with server.client() as http:
            assert http.get("/oauth2/jwks").status_code == 200
        security = deployment.conf / "security"
        assert mode(security) == 0o700
        assert mode(security / "server.key") == 0o600
        assert mode(security / "signing") == 0o700
        assert mode(deployment.database.parent) == 0o700
        for suffix in ("", "-wal", "-shm"):
            path = deployment.database.with_name(deployment.database.name + suffix)
            assert path.exists() and mode(path) == 0o600, (suffix, oct(mode(path)))
    finally:
        server.stop()


def test_truststore_import_makes_conf_security_private(deployment, tmp_path) -> None:  # noqa: ANN001
    """When `truststore import` is what creates conf/security (umask 000), it is 0700 too."""
    from pki import ca

    shutil.rmtree(deployment.conf / "security")
    pem = tmp_path / "ca.pem"
    pem.write_bytes(ca().pem)
    subprocess.run(
        [
            TOKENSMITH,
            "truststore",
            "import",
            "--alias",
            "root",
            "--file",
            str(pem),
            "--conf",
            str(deployment.conf),
        ],
        check=True,
        capture_output=True,
        timeout=60,
        umask=0,
    )
    assert mode(deployment.conf / "security") == 0o700
    assert mode(deployment.conf / "security" / "truststore") == 0o700
