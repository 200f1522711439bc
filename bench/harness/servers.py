"""The servers of the benchmark, and one-off HTTPS requests to check them.

- tokensmith: a deployment directory as the tests build one (tests/conftest.py): conf/server.xml
  with ``port="0"`` on 127.0.0.1, conf/identity.xml with the three bundled authenticators,
  the plugin wheels in dropins/, the benchmark's server certificate as its keystore. Served on
  the default HTTP/1.1 lane (Hypercorn's h11), labelled "tokensmith".
- tokensmith-llhttp: the same deployment started from conf-llhttp/, whose server.xml differs
  only by ``http1="llhttp"`` on the connector (tokensmith's own protocol over httptools). Paths
  in server.xml are relative to the file, and conf-llhttp/ sits beside conf/, so ``../var`` and
  ``../dropins`` are the same database and dropins; its security/ is a symlink to conf/security,
  so the keystore, truststore and signing keys are the same too.
- node-oidc: bench/peers/node-oidc/server.js with gen_clients.py's client metadata.
- bare-hypercorn: bench/peers/bare_hypercorn/run.sh, TLS_MODE=accept-any (tokensmith's own TLS
  policy and certificate handling, so that the handshake costs the same).

All three use the same EC P-256 server certificate (gen_clients.py's server.crt).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from .procs import Proc, Procs

__all__ = [
    "ROOT",
    "LANES",
    "Clients",
    "Deployment",
    "Server",
    "start_tokensmith",
    "start_instances",
    "PgBackends",
    "with_database",
    "start_node",
    "start_bare",
    "post",
    "fetch_token",
    "introspect",
]

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
TOKENSMITH = VENV_BIN / "tokensmith"
PEERS = ROOT / "bench" / "peers"

#: HTTP/1.1 lane (the <Connector http1=> value) -> the label of its results. "hypercorn" is the
#: default, so its server.xml leaves the attribute out, as a user's would.
LANES = {"hypercorn": "tokensmith", "llhttp": "tokensmith-llhttp"}

SERVER_XML = """<?xml version="1.0" encoding="UTF-8"?>
<Server>
    <Keystore certificateFile="security/server.crt" keyFile="security/server.key"/>
    <Connector address="127.0.0.1" port="0" clientAuth="want"{http1}/>
    {database}
    <Dropins path="../dropins"/>
</Server>
"""

IDENTITY_XML = """<?xml version="1.0" encoding="UTF-8"?>
<Identity>
    <OAuth></OAuth>
    <EventListeners>
        <EventListener type="ClientAuthenticator" name="basic_auth" orderId="100" enable="true"/>
        <EventListener type="ClientAuthenticator" name="post_body_auth" orderId="110" enable="true"/>
        <EventListener type="ClientAuthenticator" name="mutual_tls" orderId="158" enable="true"/>
    </EventListeners>
</Identity>
"""


@dataclass
class Clients:
    """A gen_clients.py output directory."""

    dir: Path
    count: int

    @classmethod
    def generate(cls, out: Path, count: int, real: int) -> Clients:
        subprocess.run(
            [
                sys.executable,
                str(PEERS / "gen_clients.py"),
                str(out),
                "--count",
                str(count),
                "--real",
                str(real),
            ],
            check=True,
            capture_output=True,
            timeout=600,
        )
        return cls(out, count)

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def cert_list(self) -> Path:
        """loadgen --cert-list lines: certpath keypath client_id."""
        return self.dir / "loadgen-clients.txt"

    def first(self) -> tuple[Path, Path, str]:
        cert, key, client_id = self.cert_list.read_text().split("\n", 1)[0].split()
        return Path(cert), Path(key), client_id


@dataclass
class Deployment:
    """A tokensmith installation: conf/, conf-llhttp/, dropins/, var/ under *root*."""

    root: Path
    #: A PostgreSQL URL: the deployment's store (else SQLite in var/).
    database_url: str | None = None
    basic_id: str = ""
    basic_secret: str = ""
    registered: int = 0
    registration_s: float = 0.0

    @property
    def conf(self) -> Path:
        """The default lane's configuration, the one the CLI is run with."""
        return self.root / "conf"

    def conf_for(self, lane: str) -> Path:
        if lane not in LANES:
            raise ValueError(f"unknown HTTP/1.1 lane {lane!r}: one of {', '.join(LANES)}")
        return self.conf if lane == "hypercorn" else self.root / f"conf-{lane}"

    @classmethod
    def create(
        cls, root: Path, clients: Clients, dropins: Path, database_url: str | None = None
    ) -> Deployment:
        from xml.sax.saxutils import quoteattr

        dep = cls(root, database_url)
        database = (
            f"<Database url={quoteattr(database_url)}/>"
            if database_url
            else '<Database path="../var/tokensmith.db"/>'
        )
        (dep.conf / "security").mkdir(parents=True)
        (root / "dropins").mkdir()
        (root / "var").mkdir()
        shutil.copy(clients.server_cert, dep.conf / "security" / "server.crt")
        shutil.copy(clients.server_key, dep.conf / "security" / "server.key")
        (dep.conf / "server.xml").write_text(SERVER_XML.format(http1="", database=database))
        (dep.conf / "identity.xml").write_text(IDENTITY_XML)
        for lane in LANES:
            conf = dep.conf_for(lane)
            if conf == dep.conf:
                continue
            conf.mkdir()
            # one security/ for both lanes: the server key, the truststore and the signing keys
            # (always conf_dir/security/signing) must be the same for tokens to mean the same
            (conf / "security").symlink_to(Path("..") / "conf" / "security", target_is_directory=True)
            (conf / "server.xml").write_text(SERVER_XML.format(http1=f' http1="{lane}"', database=database))
            (conf / "identity.xml").write_text(IDENTITY_XML)
        wheels = sorted(dropins.glob("*.whl"))
        if not wheels:
            raise RuntimeError(f"no plugin wheels in {dropins}: run `make setup` first")
        for wheel in wheels:
            shutil.copy(wheel, root / "dropins")
        return dep

    def cli(self, *args: str, cpus: str | None = None) -> str:
        argv = [str(TOKENSMITH), *args, "--conf", str(self.conf)]
        if cpus:
            argv = ["taskset", "-c", cpus, *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"tokensmith {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def register_bulk(self, clients: Clients) -> None:
        """Every client of clients.jsonl, through the storage API (the CLI is one process per
        client: far too slow for 100,000). The client_ids are gen_clients.py's."""
        from cryptography import x509
        from tokensmith.models import Client
        from tokensmith.oauth.registration import registered_certificate
        from tokensmith.storage.postgres import PostgresStorage
        from tokensmith.storage.sqlite import SQLiteStorage

        started = time.perf_counter()
        store: SQLiteStorage | PostgresStorage = (
            PostgresStorage(self.database_url)
            if self.database_url
            else SQLiteStorage(self.root / "var" / "tokensmith.db")
        )
        now = int(time.time())
        try:
            with open(clients.dir / "clients.jsonl") as lines:
                for line in lines:
                    item = json.loads(line)
                    cert = x509.load_der_x509_certificate(base64.b64decode(item["cert_der_b64"]))
                    store.add_client(
                        Client(
                            client_id=item["client_id"],
                            name=item["client_id"],
                            token_endpoint_auth_method=item["token_endpoint_auth_method"],
                            grant_types=("client_credentials",),
                            created_at=now,
                            certificates=(registered_certificate(cert),),
                        )
                    )
                    self.registered += 1
        finally:
            store.close()
        self.registration_s = time.perf_counter() - started

    def register_basic(self) -> None:
        """The client_secret_basic client of scenarios 3 and 4, with the CLI as a user would."""
        shown = json.loads(
            self.cli(
                "sp",
                "add",
                "bench-basic",
                "--grant-type",
                "client_credentials",
                "--resource-server",
                "--auth-method",
                "client_secret_basic",
            )
        )
        self.basic_id, self.basic_secret = shown["client_id"], shown["client_secret"]


@dataclass
class Server:
    """A running server: its name, base URL (no path), process and startup figures."""

    name: str
    base: str
    proc: Proc
    startup_s: float
    rss_ready_mb: float
    basic: tuple[str, str]
    extra: dict[str, object] = field(default_factory=dict)


def _ready(proc: Proc, pattern: str, timeout: float) -> tuple[str, float, float]:
    match, elapsed = proc.wait_ready(pattern, timeout)
    return match.group(1), elapsed, proc.rss_mb()


def start_tokensmith(
    procs: Procs,
    dep: Deployment,
    work: Path,
    *,
    lane: str = "hypercorn",
    workers: int = 1,
    cpus: str | None = "0",
    timeout: float = 60,
) -> Server:
    """`tokensmith serve` on *lane*'s conf directory; the server is labelled LANES[lane]."""
    from tokensmith.config.settings import load_config

    conf = dep.conf_for(lane)
    label = LANES[lane]
    # the lane as tokensmith itself reads it, so that a label never names the wrong lane
    parsed = {c.http1 for c in load_config(conf).server.connectors}
    if parsed != {lane}:
        raise RuntimeError(f"{conf / 'server.xml'}: connectors serve HTTP/1.1 on {parsed}, not {lane}")
    args = [str(TOKENSMITH), "serve", "--conf", str(conf)]
    if workers != 1:
        args += ["--workers", str(workers)]
    proc = procs.start(f"{label}-w{workers}", args, log=work / f"{label}-{time.time_ns()}.log", cpus=cpus)
    url, startup, rss = _ready(proc, r"^tokensmith serving (https://\S+)/oauth2/token", timeout)
    server = Server(label, url, proc, startup, rss, (dep.basic_id, dep.basic_secret))
    server.extra["lane"] = lane
    return server


class Group:
    """Processes measured as one (a balancer and the instances behind it): their CPU time
    and memory add up; stopping it stops them all."""

    def __init__(self, procs: list[Proc]):
        self.procs = procs
        self.pid = procs[0].pid

    def cpu_s(self) -> float:
        return sum(proc.cpu_s() for proc in self.procs)

    def rss_mb(self) -> float:
        return sum(proc.rss_mb() for proc in self.procs)

    def fds(self) -> int:
        return sum(proc.fds() for proc in self.procs)

    def alive(self) -> bool:
        return all(proc.alive() for proc in self.procs)

    def stop(self, timeout: float = 15) -> int | None:
        codes = [proc.stop(timeout) for proc in self.procs]
        return next((code for code in codes if code), codes[0])


class PgBackends:
    """The PostgreSQL backend processes serving database *dbname*, measured like a Proc (CPU
    only); stopping it stops nothing. Backends that exit take their CPU time with them, so it
    is read while the servers' connection pools hold their connections."""

    def __init__(self, dbname: str):
        self.marker = f" {dbname} "
        self.pid = 0

    @classmethod
    def for_url(cls, url: str) -> PgBackends:
        """The backends of the database a postgresql:// URL names (other users of the same
        database, such as a test run on it, would be counted too: give the benchmark its own)."""
        return cls(urllib.parse.urlsplit(url).path.lstrip("/") or "postgres")

    def _pids(self) -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                title = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, UnicodeDecodeError):
                continue
            if title.startswith("postgres: ") and self.marker in title:
                pids.append(int(entry))
        return pids

    def cpu_s(self) -> float:
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self._pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / ticks

    def rss_mb(self) -> float:
        return 0.0

    def fds(self) -> int:
        return 0

    def alive(self) -> bool:
        return True

    def stop(self, timeout: float = 15) -> int | None:
        return None


def with_database(server: Server, backends: PgBackends) -> Server:
    """*server* with the database's backends counted in its CPU: the cost of a request on
    PostgreSQL includes the database's work, and the harness would otherwise count that work as
    another process disturbing the round."""
    procs = server.proc.procs if isinstance(server.proc, Group) else [server.proc]
    server.proc = Group([*procs, backends])  # type: ignore[assignment, list-item]
    server.extra["cpu_includes_postgres_backends"] = True
    return server


def start_instances(
    procs: Procs, dep: Deployment, work: Path, count: int, *, label: str, timeout: float = 60
) -> Server:
    """*count* independent `tokensmith serve` processes of *dep* (each its own port, as on
    separate machines) behind bench/harness/balancer.py, unpinned: the whole machine."""
    started = time.monotonic()
    instances = [start_tokensmith(procs, dep, work, cpus=None, timeout=timeout) for _ in range(count)]
    backends = [urllib.parse.urlsplit(server.base).netloc for server in instances]
    balancer = procs.start(
        f"{label}-balancer",
        [sys.executable, str(ROOT / "bench" / "harness" / "balancer.py"), *backends],
        log=work / f"{label}-balancer-{time.time_ns()}.log",
    )
    url, _, _ = _ready(balancer, r"^balancing (https://\S+)", timeout)
    group = Group([balancer, *(server.proc for server in instances)])
    server = Server(
        label, url, group, time.monotonic() - started, group.rss_mb(), (dep.basic_id, dep.basic_secret)
    )  # type: ignore[arg-type]
    server.extra["instances"] = count
    return server


def start_node(
    procs: Procs, clients: Clients, work: Path, *, adapter: str, cpus: str | None = "0", timeout: float = 120
) -> Server:
    env = {
        "PORT": "0",
        "TLS_CERT": str(clients.server_cert),
        "TLS_KEY": str(clients.server_key),
        "CLIENTS_FILE": str(clients.dir / "node-oidc-clients.json"),
        "ADAPTER": adapter,
    }
    proc = procs.start(
        "node-oidc",
        ["node", str(PEERS / "node-oidc" / "server.js")],
        log=work / f"node-{time.time_ns()}.log",
        env=env,
        cpus=cpus,
    )
    url, startup, rss = _ready(proc, r"^ready (https://\S+)", timeout)
    server = Server("node-oidc", url, proc, startup, rss, ("bench-basic", "bench-basic-secret"))
    server.extra["startup_line"] = proc.log_tail(1)
    return server


def start_bare(
    procs: Procs, clients: Clients, work: Path, *, cpus: str | None = "0", timeout: float = 60
) -> Server:
    env = {
        "PORT": "0",
        "TLS_CERT": str(clients.server_cert),
        "TLS_KEY": str(clients.server_key),
        "TLS_MODE": "accept-any",
        "PYTHON": str(VENV_BIN / "python"),
    }
    proc = procs.start(
        "bare-hypercorn",
        [str(PEERS / "bare_hypercorn" / "run.sh")],
        log=work / f"bare-{time.time_ns()}.log",
        env=env,
        cpus=cpus,
    )
    url, startup, rss = _ready(proc, r"^ready (https://\S+)", timeout)
    return Server("bare-hypercorn", url, proc, startup, rss, ("bench-basic", "bench-basic-secret"))


# -- one-off requests ---------------------------------------------------------------------------


def post(
    base: str,
    path: str,
    form: dict[str, str],
    *,
    cafile: Path,
    cert: tuple[Path, Path] | None = None,
    basic: tuple[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, dict[str, object]]:
    """POST a form on a new TLS connection (HTTP/1.1); the status and the JSON body."""
    context = ssl.create_default_context(cafile=str(cafile))
    if cert is not None:
        context.load_cert_chain(*map(str, cert))
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, context=context, timeout=timeout)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if basic is not None:
        # RFC 6749 §2.3.1: client_id and secret are form-encoded before Basic encoding
        raw = ":".join(urllib.parse.quote(part, safe="") for part in basic)
        headers["Authorization"] = "Basic " + base64.b64encode(raw.encode()).decode()
    try:
        conn.request("POST", path, urllib.parse.urlencode(form), headers)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    try:
        data = json.loads(body)
    except ValueError:
        data = {"raw": body[:200].decode(errors="replace")}
    return response.status, data if isinstance(data, dict) else {"raw": data}


def fetch_token(server: Server, clients: Clients) -> str:
    """An access token for the first mutual-TLS client, bound to its certificate."""
    cert, key, client_id = clients.first()
    status, data = post(
        server.base,
        "/oauth2/token",
        {"grant_type": "client_credentials", "client_id": client_id},
        cafile=clients.server_cert,
        cert=(cert, key),
    )
    if status != 200 or "access_token" not in data:
        raise RuntimeError(f"{server.name}: token request for {client_id} got {status} {data}")
    return str(data["access_token"])


def introspect(server: Server, clients: Clients, token: str) -> dict[str, object]:
    status, data = post(
        server.base, "/oauth2/introspect", {"token": token}, cafile=clients.server_cert, basic=server.basic
    )
    if status != 200:
        raise RuntimeError(f"{server.name}: introspection got {status} {data}")
    return data
