#!/usr/bin/env python3
"""Benchmark tokensmith's token endpoint, on both HTTP/1.1 lanes, against node-oidc-provider
and a bare Hypercorn app.

    .venv/bin/python bench/run.py            # the full run (make bench)
    .venv/bin/python bench/run.py --smoke    # about a minute: every scenario once (make bench-smoke)

For each number of registered mutual-TLS clients (--sizes), it generates the clients
(bench/peers/gen_clients.py), registers them in a fresh tokensmith deployment and in node-oidc,
starts each server pinned to CPU 0 and drives it with bench/loadgen pinned to CPU 1. tokensmith
runs twice on the same deployment: "tokensmith" is the default lane (Hypercorn's h11 serves
HTTP/1.1) and "tokensmith-llhttp" the opt-in lane (http1="llhttp" on the connector):

  1. client_credentials, self_signed_tls_client_auth, keep-alive
  2. the same with a new TLS connection (full handshake, client certificate) per request
  3. client_credentials, client_secret_basic, keep-alive        (first size only)
  4. introspection of a certificate-bound token, keep-alive     (first size only)

With a PostgreSQL database (--postgres URL, TOKENSMITH_BENCH_POSTGRES_URL or the tests'
TOKENSMITH_TEST_POSTGRES_URL), "tokensmith-postgres"
is the default lane on PostgreSQL instead of SQLite, at the first size, beside the others; and
one against two independent instances on that database, behind bench/harness/balancer.py on the
whole machine, compared as requests per CPU-second of the servers (a 2-core machine cannot show
two instances doubling the rate). Each run uses a new schema of the database and drops it.

It also records startup time and resident memory per size, the time from `tokensmith sp add`
to the new client's first token on the running server, and 1 against 2 workers on the whole
machine. Results: bench/results/latest.json and latest.md (smoke.json and smoke.md with
--smoke, so a smoke run never replaces a full one), plus a timestamped copy of the JSON.
--update-docs also rewrites the results section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import report, sysinfo  # noqa: E402
from harness.load import LOADGEN, SCENARIOS, Calm, Settings, loadgen_bound, run_scenario  # noqa: E402
from harness.procs import Procs, StartupError  # noqa: E402
from harness.servers import (
    LANES,
    PEERS,
    ROOT,
    Clients,
    Deployment,
    PgBackends,
    Server,  # noqa: E402
    fetch_token,
    introspect,
    post,
    start_bare,
    start_instances,
    start_node,
    start_tokensmith,
    with_database,
)

RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
SERVER_CPUS, LOADGEN_CPUS = "0", "1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="See bench/README.md for what each scenario measures."
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="about a minute: 1 round of 1 s, sizes 1 and 100, every scenario once;"
        " node-oidc is skipped with a note if it is not set up",
    )
    p.add_argument("--rounds", type=int, help="rounds per scenario (default 3; smoke 1)")
    p.add_argument("--duration", type=float, help="measured seconds per round (default 10; smoke 1)")
    p.add_argument("--warmup", type=float, help="unmeasured seconds before each round (default 2; smoke 0.3)")
    p.add_argument("--connections", "-c", type=int, default=32, help="concurrent connections (32)")
    p.add_argument(
        "--retries",
        type=int,
        help="extra rounds per scenario that may replace rounds"
        " disturbed by other processes (default 3; smoke 0)",
    )
    p.add_argument(
        "--calm-wait",
        type=float,
        metavar="SECONDS",
        help="before each round, wait up to this long for other processes to go below"
        " --disturbed (default 30; smoke 0), within a total of 10 minutes",
    )
    p.add_argument(
        "--disturbed",
        type=float,
        default=15.0,
        metavar="PCT",
        help="other processes' CPU, in %% of one core, that makes a round disturbed (15)",
    )
    p.add_argument(
        "--sizes",
        help="registered mutual-TLS clients, comma-separated (default"
        " 1,10000,100000; smoke 1,100); the first size gets all four scenarios",
    )
    p.add_argument(
        "--node-adapter",
        choices=("map", "memory"),
        default="map",
        help="node-oidc token storage: map keeps every token (default), memory is"
        " oidc-provider's 1000-entry LRU",
    )
    p.add_argument(
        "--llhttp",
        choices=("all", "first"),
        default="all",
        help="sizes at which the llhttp lane (tokensmith-llhttp) runs beside the"
        " default lane: all (default) or only the first (saves about 5 minutes of a"
        " full run)",
    )
    p.add_argument(
        "--postgres",
        metavar="URL",
        default=os.environ.get("TOKENSMITH_BENCH_POSTGRES_URL")
        or os.environ.get("TOKENSMITH_TEST_POSTGRES_URL", ""),
        help="a PostgreSQL database to benchmark tokensmith on (a schema of its own is made and"
        " dropped); default TOKENSMITH_BENCH_POSTGRES_URL, else TOKENSMITH_TEST_POSTGRES_URL;"
        " without one the PostgreSQL rows are skipped with a note",
    )
    p.add_argument("--skip-instances", action="store_true", help="skip 1 vs 2 instances on PostgreSQL")
    p.add_argument("--skip-node", action="store_true", help="do not run node-oidc")
    p.add_argument("--skip-workers", action="store_true", help="skip 1 vs 2 workers")
    p.add_argument(
        "--dropins",
        type=Path,
        default=ROOT / "dropins",
        help="plugin wheels to deploy (default: the repository's dropins/, built by make setup)",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory (bench/results)")
    p.add_argument("--name", help="results file stem (default latest; smoke with --smoke)")
    p.add_argument(
        "--update-docs",
        action="store_true",
        help=f"rewrite the results section of {DOC.relative_to(ROOT)} (not with --smoke)",
    )
    p.add_argument("--keep-workdir", action="store_true", help="keep the temporary work directory")
    p.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="measure nothing: rewrite the"
        " Markdown (and, with --update-docs, the docs) from a results JSON file",
    )
    args = p.parse_args(argv)
    smoke = args.smoke
    args.rounds = args.rounds or (1 if smoke else 3)
    args.retries = args.retries if args.retries is not None else (0 if smoke else 3)
    args.calm_wait = args.calm_wait if args.calm_wait is not None else (0.0 if smoke else 30.0)
    args.duration = args.duration or (1.0 if smoke else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (0.3 if smoke else 2.0)
    try:
        args.sizes = [int(s) for s in (args.sizes or ("1,100" if smoke else "1,10000,100000")).split(",")]
    except ValueError:
        p.error("--sizes takes integers, e.g. 1,10000,100000")
    if min(args.sizes) < 1 or args.rounds < 1 or args.duration <= 0 or args.connections < 1:
        p.error("sizes, rounds, duration and connections must be positive")
    if smoke and args.update_docs:
        p.error("--update-docs needs a full run, not --smoke")
    args.name = args.name or ("smoke" if smoke else "latest")
    return args


def node_status(args: argparse.Namespace) -> str | None:
    """None if node-oidc can run, else why not."""
    if args.skip_node:
        return "--skip-node was given"
    if not shutil.which("node"):
        return "node is not installed"
    if not (PEERS / "node-oidc" / "node_modules" / "oidc-provider").is_dir():
        return "oidc-provider is not installed (run bench/peers/node-oidc/setup.sh)"
    return None


class Run:
    """One benchmark run: its settings, the processes it owns and the results it collects."""

    def __init__(self, args: argparse.Namespace, work: Path, procs: Procs):
        self.args, self.work, self.procs = args, work, procs
        self.calm = Calm(args.calm_wait, 600.0)
        self.settings = Settings(
            args.rounds,
            args.duration,
            args.warmup,
            args.connections,
            LOADGEN_CPUS,
            args.retries,
            args.disturbed,
            self.calm,
        )
        self.code_seen: dict[str, list[str]] = {}
        #: --postgres with a schema of this run's own (see postgres_schema), or "".
        self.postgres_url = ""
        self.results: dict = {
            "servers": {},
            "registration": {},
            "workers": {},
            "instances": {},
            "notes": [],
            "sizes": args.sizes,
            "status": "running",
            "lanes": {label: lane for lane, label in LANES.items()},
        }

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def start(self, label: str, start, clients: Clients) -> tuple[Server, str, dict]:  # noqa: ANN001
        """Start a server and check that it issues a bound token and serves client_secret_basic;
        the server, a token for scenario 4 and its results entry."""
        code = sysinfo.code_fingerprint(self.args.dropins) if label.startswith("tokensmith") else None
        server: Server = start()
        server.name = label
        entry: dict = {
            "url": server.base,
            "startup_s": round(server.startup_s, 3),
            "rss_ready_mb": round(server.rss_ready_mb, 1),
            "scenarios": {},
        }
        if code is not None:
            entry["code"] = code
            self.code_seen.setdefault(code, []).append(f"{label} (N={clients.count:,})")
        entry.update(server.extra)
        self.log(f"  {label}: ready in {server.startup_s:.2f} s, RSS {server.rss_ready_mb:.0f} MiB")
        token = fetch_token(server, clients)
        info = introspect(server, clients, token)
        expected = json.loads((clients.dir / "clients.jsonl").open().readline())["x5t#S256"]
        cnf = info.get("cnf")
        got = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
        entry["bound"] = (
            None if label == "bare-hypercorn" else (info.get("active") is True and got == expected)
        )
        status, data = post(
            server.base,
            "/oauth2/token",
            {"grant_type": "client_credentials"},
            cafile=clients.server_cert,
            basic=server.basic,
        )
        if status != 200:
            raise RuntimeError(f"{label}: client_secret_basic token request got {status} {data}")
        return server, token, entry

    def measure(
        self,
        starters: dict,
        clients: Clients,
        keys: list[str],
        *,
        settings: Settings | None = None,
        after: dict | None = None,
    ) -> dict[str, dict]:
        """Start every server of *starters* (label: start function), run *keys* on them with
        the rounds interleaved, measure memory, run *after[label]*, stop them; their entries."""
        settings = settings or self.settings
        running: list[tuple[Server, str]] = []
        entries: dict[str, dict] = {}
        try:
            for label, start in starters.items():
                server, token, entries[label] = self.start(label, start, clients)
                running.append((server, token))
            for key in keys:
                self.log(f"  scenario {key[1]} ({SCENARIOS[key].title})")
                summaries = run_scenario(SCENARIOS[key], running, clients, settings, log=print)
                for label, summary in summaries.items():
                    entries[label]["scenarios"][key] = summary
                    self.flag(label, key, clients.count, summary, settings)
            for server, _ in running:
                entries[server.name]["rss_after_mb"] = round(server.proc.rss_mb(), 1)
                if after and server.name in after:
                    after[server.name](server)
        finally:
            for server, _ in running:
                self.procs.stop(server.proc)
        return entries

    def flag(self, label: str, key: str, size: int, summary: dict, settings: Settings) -> None:
        """Notes for figures to read with care."""
        where = f"{label} scenario {key[1]} (N={size:,})"
        if summary.get("rounds_without_responses"):
            self.note(
                f"{where}: {summary['rounds_without_responses']} round(s) had no response"
                f" complete within the {settings.duration} s window, so their rps is 0:"
                " each response took longer than the window."
            )
        if summary.get("medians_include_disturbed"):
            self.note(
                f"{where}: other processes used up to {summary['other_cpu_pct_max']:.0f}%"
                " of a CPU during the rounds behind this figure (no undisturbed round in"
                f" {settings.rounds + settings.retries} tries): treat it with care."
            )
        if loadgen_bound(summary):
            self.note(
                f"{where}: loadgen used {summary['loadgen_cpu_pct_max']:.0f}% of a core, so"
                " it may have been the bottleneck; that figure is a lower bound."
            )

    def note(self, text: str) -> None:
        if text not in self.results["notes"]:
            self.results["notes"].append(text)

    def registration(self, dep: Deployment, server: Server, cert: Path, key: Path, size: int) -> None:
        """`tokensmith sp add` on the running server, then token requests until one succeeds."""
        started = time.monotonic()
        shown = json.loads(
            dep.cli(
                "sp",
                "add",
                f"fresh-{size}",
                "--grant-type",
                "client_credentials",
                "--auth-method",
                "self_signed_tls_client_auth",
                "--cert",
                str(cert),
                cpus=LOADGEN_CPUS,
            )
        )
        cli_done = time.monotonic()
        status, attempts = None, 0
        while attempts < 500 and time.monotonic() - cli_done < 10:
            attempts += 1
            status, _ = post(
                server.base,
                "/oauth2/token",
                {"grant_type": "client_credentials", "client_id": str(shown["client_id"])},
                cafile=dep.conf / "security" / "server.crt",
                cert=(cert, key),
            )
            if status == 200:
                break
            time.sleep(0.01)
        done = time.monotonic()
        result = {
            "ok": status == 200,
            "status": status,
            "attempts": attempts,
            "total_s": round(done - started, 3),
            "cli_s": round(cli_done - started, 3),
            "after_cli_s": round(done - cli_done, 3),
        }
        self.results["registration"][str(size)] = result
        self.log(f"  registration to first token: {result}")

    def execute(self) -> None:
        args, work = self.args, self.work
        node_skip = node_status(args)
        if node_skip:
            if not args.smoke and not args.skip_node:
                raise SystemExit(
                    f"run.py: node-oidc is required for a full run: {node_skip} (or pass --skip-node)"
                )
            self.results["node_skipped"] = node_skip
            self.note(f"node-oidc skipped: {node_skip}; no tokensmith/node ratios in this run.")
        fresh = Clients.generate(work / "fresh", len(args.sizes), len(args.sizes))
        fresh_lines = [line.split() for line in fresh.cert_list.read_text().splitlines()]
        servers = self.results["servers"]
        first_dep: Deployment | None = None
        pg_dep: Deployment | None = None
        if not self.postgres_url:
            self.note(
                "PostgreSQL rows skipped: no database given (--postgres URL or"
                " TOKENSMITH_BENCH_POSTGRES_URL)."
            )
        for index, size in enumerate(args.sizes):
            keys = list(SCENARIOS) if index == 0 else ["s1", "s2"]
            self.log(f"{size:,} registered mutual-TLS clients: generating")
            clients = Clients.generate(work / f"clients-{size}", size, min(32, size))
            dep = Deployment.create(work / f"tokensmith-{size}", clients, args.dropins)
            dep.register_bulk(clients)
            dep.register_basic()
            self.log(
                f"  registered {dep.registered:,} clients through the storage API in"
                f" {dep.registration_s:.1f} s (not timed in the results)"
            )
            cert, key = Path(fresh_lines[index][0]), Path(fresh_lines[index][1])
            starters = {"tokensmith": lambda: start_tokensmith(self.procs, dep, work, cpus=SERVER_CPUS)}
            if index == 0 or args.llhttp == "all":
                starters["tokensmith-llhttp"] = lambda: start_tokensmith(
                    self.procs, dep, work, lane="llhttp", cpus=SERVER_CPUS
                )
            if not node_skip:
                starters["node-oidc"] = lambda: start_node(
                    self.procs, clients, work, adapter=args.node_adapter, cpus=SERVER_CPUS
                )
            if index == 0:
                starters["bare-hypercorn"] = lambda: start_bare(self.procs, clients, work, cpus=SERVER_CPUS)
            if index == 0 and self.postgres_url:
                pg_dep = Deployment.create(
                    work / "tokensmith-postgres", clients, args.dropins, self.postgres_url
                )
                pg_dep.register_bulk(clients)
                pg_dep.register_basic()
                starters["tokensmith-postgres"] = lambda: with_database(
                    start_tokensmith(self.procs, pg_dep, work, cpus=SERVER_CPUS),
                    PgBackends.for_url(self.args.postgres),
                )
            entries = self.measure(
                starters,
                clients,
                keys,
                after={"tokensmith": lambda server: self.registration(dep, server, cert, key, size)},
            )
            for label in LANES.values():
                if label in entries:
                    entries[label].update(
                        registered=dep.registered, bulk_registration_s=round(dep.registration_s, 2)
                    )
            for label, entry in entries.items():
                servers.setdefault(label, {})[str(size)] = entry
            if index == 0:
                first_dep, first_clients = dep, clients
            else:
                shutil.rmtree(dep.root, ignore_errors=True)
                shutil.rmtree(clients.dir, ignore_errors=True)
        if not args.skip_workers and first_dep is not None:
            self.log("tokensmith --workers 1 and --workers 2, whole machine (no pinning)")
            whole = Settings(
                args.rounds,
                args.duration,
                args.warmup,
                args.connections,
                None,
                args.retries,
                args.disturbed,
                self.calm,
            )
            entries = self.measure(
                {
                    "tokensmith-1-worker": lambda: start_tokensmith(
                        self.procs, first_dep, work, workers=1, cpus=None
                    ),
                    "tokensmith-2-workers": lambda: start_tokensmith(
                        self.procs, first_dep, work, workers=2, cpus=None
                    ),
                },
                first_clients,
                ["s1", "s2"],
                settings=whole,
            )
            self.results["workers"] = {
                "1": entries["tokensmith-1-worker"],
                "2": entries["tokensmith-2-workers"],
            }
        if self.postgres_url and not args.skip_instances and pg_dep is not None:
            self.log("tokensmith on PostgreSQL: 1 instance and 2 instances behind a balancer, whole machine")
            whole = Settings(
                args.rounds,
                args.duration,
                args.warmup,
                args.connections,
                None,
                args.retries,
                args.disturbed,
                self.calm,
            )
            entries = self.measure(
                {
                    "tokensmith-postgres-1-instance": lambda: with_database(
                        start_instances(self.procs, pg_dep, work, 1, label="tokensmith-postgres-1-instance"),
                        PgBackends.for_url(self.args.postgres),
                    ),
                    "tokensmith-postgres-2-instances": lambda: with_database(
                        start_instances(self.procs, pg_dep, work, 2, label="tokensmith-postgres-2-instances"),
                        PgBackends.for_url(self.args.postgres),
                    ),
                },
                first_clients,
                ["s1", "s2"],
                settings=whole,
            )
            self.results["instances"] = {
                "1": entries["tokensmith-postgres-1-instance"],
                "2": entries["tokensmith-postgres-2-instances"],
            }


def standing_notes(run: Run) -> None:
    args = run.args
    first = args.sizes[0]
    llhttp_sizes = "every size" if args.llhttp == "all" else f"the first size ({first:,})"
    run.note(
        "Two tokensmith lanes, one deployment: **tokensmith** is the default lane, HTTP/1.1"
        " served by Hypercorn (h11); **tokensmith-llhttp** is the opt-in lane, the same"
        ' conf with http1="llhttp" on the connector (tokensmith\'s own HTTP/1.1 protocol over'
        " httptools/llhttp). Both serve the same database, dropins and keys, so each lane's"
        " tokens go into the same table; they are loaded in turn, never at once."
        f" tokensmith-llhttp runs at {llhttp_sizes}. The targets are the default lane's"
        " unless they name the llhttp lane; `sp add` to first token and the workers"
        " comparison use the default lane only."
    )
    run.note(
        "tokensmith clients are registered in bulk through the storage API"
        " (SQLiteStorage.add_client, one autocommit insert per client), not with the CLI,"
        " and that registration is not timed in the targets; `sp add` is timed on its own."
    )
    run.note(
        f"The load uses min(32, N) distinct clients round-robin over {args.connections}"
        f" connections (one certificate per connection): with {first} registered client(s)"
        " every connection is the same client, at larger sizes 32 different ones."
    )
    run.note(
        "bare-hypercorn has no clients, so it is measured once, at the first size; its"
        " figures are the reference for every size. It runs in TLS_MODE=accept-any, the same"
        " TLS policy and certificate callback as tokensmith."
    )
    run.note(
        f"node-oidc stores tokens in memory (ADAPTER={args.node_adapter}); tokensmith writes"
        " every token (hashed) to SQLite in WAL mode. node-oidc compares client secrets in"
        " plaintext; tokensmith verifies a slow-KDF hash (scenario 3)."
    )
    run.note(
        "All servers use the same EC P-256 server certificate; loadgen speaks HTTP/1.1 only"
        " (no h2), with no TLS session resumption in scenario 2."
    )
    run.note(
        "The machine may be shared: a round during which other processes (not the server,"
        f" loadgen or this harness) used more than {args.disturbed:.0f}% of a CPU is marked"
        f" disturbed and replaced, up to {args.retries} extra round(s) per scenario; the"
        " medians use undisturbed rounds when there are any."
    )
    if not args.skip_workers:
        run.note(
            "Workers comparison (default lane): server and loadgen share both CPUs (no pinning), so"
            " loadgen's CPU is taken from the server's budget."
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        results = json.loads(args.render.read_text())
        results["targets"] = report.targets(results)
        args.name = args.render.stem.split("-2")[0] if args.name in ("latest", "smoke") else args.name
        args.out.mkdir(parents=True, exist_ok=True)
        write(results, args, archive=False)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that every server is stopped
    if not LOADGEN.exists():
        subprocess.run(["make", "-s", "-C", str(LOADGEN.parent)], check=True)
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="tokensmith-bench-"))
    args.out.mkdir(parents=True, exist_ok=True)
    with Procs() as procs:
        run = Run(args, work, procs)
        results = run.results
        results["meta"] = {
            "mode": "smoke" if args.smoke else "full",
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "argv": sys.argv[1:] if argv is None else argv,
            "machine": sysinfo.machine(),
            "versions": sysinfo.versions(),
            "git": sysinfo.git_state(),
            "workdir": str(work),
        }
        results["settings"] = {
            "rounds": args.rounds,
            "duration": args.duration,
            "warmup": args.warmup,
            "connections": args.connections,
            "server_cpus": SERVER_CPUS,
            "loadgen_cpus": LOADGEN_CPUS,
            "node_adapter": args.node_adapter,
            "retries": args.retries,
            "disturbed_pct": args.disturbed,
            "calm_wait_s": args.calm_wait,
        }
        standing_notes(run)
        try:
            with postgres_schema(args.postgres) as url:
                run.postgres_url = url
                run.execute()
            results["status"] = "complete"
        except (Exception, KeyboardInterrupt, SystemExit) as exc:
            results["status"] = "incomplete"
            results["error"] = f"{type(exc).__name__}: {exc}"
            run.log(f"stopped early: {results['error']}")
            if isinstance(exc, StartupError):
                print(exc, file=sys.stderr)
        finally:
            results["meta"]["duration_s"] = round(time.time() - started, 1)
            results["meta"]["tokensmith_code"] = run.code_seen
            if len(run.code_seen) > 1:
                run.note(
                    "**tokensmith's sources changed during the run** (the tree is edited"
                    " concurrently), so its servers did not all run the same code; by code"
                    " fingerprint: "
                    + "; ".join(f"{code}: {', '.join(labels)}" for code, labels in run.code_seen.items())
                )
            results["meta"]["calm_waited_s"] = round(run.calm.waited_s, 1)
            results["meta"]["loadavg_at_end"] = os.getloadavg()
            results["targets"] = report.targets(results)
            write(results, args)
    if not args.keep_workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if results["status"] == "complete" else 1


@contextlib.contextmanager
def postgres_schema(url: str) -> Iterator[str]:
    """A new schema of the database *url* for this run, dropped at its end; "" without one."""
    if not url:
        yield ""
        return
    import psycopg

    sys.path.insert(0, str(ROOT / "tests"))
    from pg import with_search_path

    schema = f"tokensmith_bench_{os.getpid()}_{int(time.time())}"
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as db:
        db.execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_search_path(url, schema)
    finally:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as db:
            db.execute(f"DROP SCHEMA {schema} CASCADE")


def write(results: dict, args: argparse.Namespace, archive: bool = True) -> None:
    md = report.markdown(results)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    text = json.dumps(results, indent=1) + "\n"
    (args.out / f"{args.name}.json").write_text(text)
    if archive:
        (args.out / f"{args.name}-{stamp}.json").write_text(text)
    (args.out / f"{args.name}.md").write_text(md)
    print("\n" + md)
    print(
        f"results: {args.out / (args.name + '.json')}, {args.out / (args.name + '.md')}"
        f" ({results['meta']['duration_s'] / 60:.1f} min)"
    )
    if args.update_docs:
        if results["status"] != "complete":
            print(f"not updating {DOC}: the run is incomplete", file=sys.stderr)
        elif not DOC.exists() or not report.update_docs(DOC, md):
            print(f"not updating {DOC}: no {report.BEGIN} ... {report.END} markers", file=sys.stderr)
        else:
            print(f"updated {DOC}")


if __name__ == "__main__":
    sys.exit(main())
