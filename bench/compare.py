#!/usr/bin/env python3
"""Head-to-head comparisons of tokensmith variants with bench/run.py's harness, in one run.

    .venv/bin/python bench/compare.py --before /tmp/before --postgres postgresql://postgres@127.0.0.1:5432/bench_ab

One deployment with one registered mutual-TLS client (the 32 connections all present it), and
these servers, each started pinned to CPU 0 with loadgen on CPU 1, rounds interleaved:

  tokensmith            this tree, default (Hypercorn) lane, SQLite, no <AccessLog>
  tokensmith-accesslog  the same deployment and database, <AccessLog format="json"> to a file
  before                another tokensmith tree (--before: a checkout with its own .venv and
                        dropins, made with `make setup`), its deployment built by that tree's own
                        bench harness, default lane, SQLite, no access log
  tokensmith-postgres   this tree, default lane, on PostgreSQL (--postgres)
  tokensmith-llhttp     this tree, the opt-in llhttp lane (http1="llhttp"), SQLite (--llhttp)
  tokensmith-postgres-llhttp
                        this tree, the llhttp lane, on PostgreSQL (--llhttp and --postgres)
  node-oidc             node-oidc-provider (bench/peers/node-oidc)

Scenario 1 runs on all of them; scenario 2 on tokensmith, tokensmith-postgres, their llhttp
rows and node-oidc.
Then, on the whole machine (nothing pinned), one tokensmith instance on PostgreSQL against two,
each behind bench/harness/balancer.py, scenarios 1 and 2, compared in requests per CPU-second.
For the PostgreSQL rows the server's CPU includes the PostgreSQL backends serving the run's
database (found by their process titles), so that the database's work is neither counted as
another process disturbing the round nor left out of the cost per request.

The comparisons and their targets: before vs this tree, scenario 1 (>= 0.95x); access log on vs
off, scenario 1 (>= 0.9x); PostgreSQL vs node-oidc, scenario 1 (>= 1.0x); two instances vs one
per CPU-second, scenario 1 (>= 0.9x). Results: bench/results/compare.json and compare.md (plus
a timestamped copy of the JSON).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import sysinfo  # noqa: E402
from harness.load import LOADGEN, SCENARIOS, Calm, Settings, run_scenario  # noqa: E402
from harness.procs import Procs  # noqa: E402
from harness.servers import (  # noqa: E402
    IDENTITY_XML,
    SERVER_XML,
    Clients,
    Deployment,
    PgBackends,
    Server,
    _ready,
    start_instances,
    start_node,
    start_tokensmith,
    with_database,
)
from run import RESULTS, SERVER_CPUS, Run, node_status, postgres_schema  # noqa: E402

BASE = "tokensmith"
ACCESSLOG = "tokensmith-accesslog"
BEFORE = "before"
POSTGRES = "tokensmith-postgres"
LLHTTP = "tokensmith-llhttp"
POSTGRES_LLHTTP = "tokensmith-postgres-llhttp"
NODE = "node-oidc"
ONE, TWO = "tokensmith-postgres-1-instance", "tokensmith-postgres-2-instances"

#: Builds the --before tree's deployment with that tree's own harness and Python (its storage
#: API and dropins are its own); prints the client_secret_basic client as JSON.
BEFORE_SETUP = """
import json, sys
from pathlib import Path
sys.path.insert(0, "bench")
from harness.servers import Clients, Deployment
clients = Clients(Path(sys.argv[2]), int(sys.argv[3]))
dep = Deployment.create(Path(sys.argv[1]), clients, Path("dropins"))
dep.register_bulk(clients)
dep.register_basic()
print(json.dumps([dep.basic_id, dep.basic_secret]))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="See bench/README.md (Comparisons) for what each comparison means.",
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds per scenario and server (3)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per round (10)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each round (2)")
    p.add_argument("--connections", "-c", type=int, default=32, help="concurrent connections (32)")
    p.add_argument(
        "--retries",
        type=int,
        default=1,
        help="extra rounds per scenario and server that may replace disturbed rounds (1)",
    )
    p.add_argument(
        "--calm-wait",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="before each round, wait up to this long for other processes to go below --disturbed (15)",
    )
    p.add_argument(
        "--calm-budget",
        type=float,
        default=180.0,
        metavar="SECONDS",
        help="total waiting for calm over the run (180)",
    )
    p.add_argument(
        "--disturbed",
        type=float,
        default=15.0,
        metavar="PCT",
        help="other processes' CPU, in %% of one core, that makes a round disturbed (15)",
    )
    p.add_argument(
        "--before",
        type=Path,
        help="another tokensmith tree set up with `make setup` (its .venv and dropins/);"
        " without it the before-vs-now comparison is skipped",
    )
    p.add_argument(
        "--postgres",
        metavar="URL",
        default=os.environ.get("TOKENSMITH_BENCH_POSTGRES_URL", ""),
        help="a PostgreSQL database (a schema of its own is made and dropped); default"
        " TOKENSMITH_BENCH_POSTGRES_URL; without one the PostgreSQL comparisons are skipped",
    )
    p.add_argument("--skip-node", action="store_true", help="do not run node-oidc")
    p.add_argument(
        "--llhttp",
        action="store_true",
        help="also run this tree on the opt-in llhttp lane (SQLite, and PostgreSQL with --postgres)",
    )
    p.add_argument("--skip-accesslog", action="store_true", help="skip the access log on/off comparison")
    p.add_argument("--skip-instances", action="store_true", help="skip 1 vs 2 instances on PostgreSQL")
    p.add_argument(
        "--dropins",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "dropins",
        help="plugin wheels to deploy for this tree (default: the repository's dropins/)",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory (bench/results)")
    p.add_argument("--name", default="compare", help="results file stem (compare)")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temporary work directory")
    args = p.parse_args(argv)
    args.sizes = [1]  # run.Run's results record the sizes: one registered client here
    if args.rounds < 1 or args.duration <= 0 or args.connections < 1 or args.retries < 0:
        p.error("rounds, duration and connections must be positive, retries not negative")
    if args.before is not None and not (args.before / ".venv" / "bin" / "tokensmith").exists():
        p.error(f"--before {args.before}: no .venv/bin/tokensmith there (run `make setup` in it)")
    return args


def accesslog_conf(dep: Deployment) -> Path:
    """conf-accesslog/ beside dep's conf/: the same server.xml plus a JSON access log to
    var/access.log, the same identity.xml, security/ shared (as conf-llhttp/ is)."""
    from tokensmith.config.settings import load_config

    conf = dep.root / "conf-accesslog"
    conf.mkdir()
    (conf / "security").symlink_to(Path("..") / "conf" / "security", target_is_directory=True)
    database = '<Database path="../var/tokensmith.db"/>'
    log = '<AccessLog enabled="true" format="json" file="../var/access.log"/>'
    (conf / "server.xml").write_text(SERVER_XML.format(http1="", database=f"{database}\n    {log}"))
    (conf / "identity.xml").write_text(IDENTITY_XML)
    setting = load_config(conf).server.access_log
    if not (setting.enabled and setting.format == "json" and setting.file):
        raise RuntimeError(f"{conf / 'server.xml'}: the access log is not on as JSON to a file: {setting}")
    return conf


def start_conf(
    procs: Procs, label: str, tokensmith: Path, conf: Path, basic: tuple[str, str], work: Path
) -> Server:
    """`tokensmith serve --conf CONF` with the given executable, pinned to the server CPU."""
    proc = procs.start(
        label,
        [str(tokensmith), "serve", "--conf", str(conf)],
        log=work / f"{label}-{time.time_ns()}.log",
        cpus=SERVER_CPUS,
    )
    url, startup, rss = _ready(proc, r"^tokensmith serving (https://\S+)/oauth2/token", 60)
    return Server(label, url, proc, startup, rss, basic)


def before_deployment(before: Path, root: Path, clients: Clients) -> tuple[str, str]:
    done = subprocess.run(
        [
            str(before / ".venv" / "bin" / "python"),
            "-c",
            BEFORE_SETUP,
            str(root),
            str(clients.dir),
            str(clients.count),
        ],
        cwd=before,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"--before {before}: its harness could not build a deployment: {done.stderr[-800:]}"
        )
    basic_id, secret = json.loads(done.stdout.strip().splitlines()[-1])
    return basic_id, secret


def measure(
    run: Run, starters: dict, clients: Clients, plan: dict[str, list[str]], settings: Settings
) -> dict[str, dict]:
    """Start every server of *starters*, run each scenario of *plan* on the servers it names
    (rounds interleaved among them), record RSS after the load, stop them; their entries."""
    running: dict[str, tuple[Server, str]] = {}
    entries: dict[str, dict] = {}
    try:
        for label, start in starters.items():
            server, token, entries[label] = run.start(label, start, clients)
            running[label] = (server, token)
        for key, labels in plan.items():
            targets: list[tuple[Server, str | None]] = [
                running[label] for label in labels if label in running
            ]
            if not targets:
                continue
            run.log(f"  scenario {key[1]} ({SCENARIOS[key].title}): {', '.join(s.name for s, _ in targets)}")
            for label, summary in run_scenario(SCENARIOS[key], targets, clients, settings, log=print).items():
                entries[label]["scenarios"][key] = summary
                run.flag(label, key, clients.count, summary, settings)
        for label, (server, _) in running.items():
            entries[label]["rss_after_mb"] = round(server.proc.rss_mb(), 1)
    finally:
        for server, _ in running.values():
            run.procs.stop(server.proc)
    return entries


def execute(run: Run, args: argparse.Namespace, work: Path) -> None:
    results = run.results
    node_skip = node_status(args)
    if node_skip:
        run.note(f"node-oidc skipped: {node_skip}.")
    clients = Clients.generate(work / "clients-1", 1, 1)
    dep = Deployment.create(work / "tokensmith", clients, args.dropins)
    dep.register_bulk(clients)
    dep.register_basic()
    starters: dict = {BASE: lambda: start_tokensmith(run.procs, dep, work, cpus=SERVER_CPUS)}
    if args.llhttp:
        starters[LLHTTP] = lambda: start_tokensmith(run.procs, dep, work, lane="llhttp", cpus=SERVER_CPUS)
    if not args.skip_accesslog:
        conf = accesslog_conf(dep)
        starters[ACCESSLOG] = lambda: start_conf(
            run.procs,
            ACCESSLOG,
            Path(sys.executable).parent / "tokensmith",
            conf,
            (dep.basic_id, dep.basic_secret),
            work,
        )
    if args.before is not None:
        before_root = work / "before"
        basic = before_deployment(args.before.resolve(), before_root, clients)
        results["before"] = {"tree": str(args.before.resolve()), "commit": tree_commit(args.before)}
        starters[BEFORE] = lambda: start_conf(
            run.procs,
            BEFORE,
            args.before.resolve() / ".venv" / "bin" / "tokensmith",
            before_root / "conf",
            basic,
            work,
        )
    pg_dep: Deployment | None = None
    backends: PgBackends | None = None
    if run.postgres_url:
        backends = PgBackends.for_url(args.postgres)
        pg_dep = Deployment.create(work / "tokensmith-postgres", clients, args.dropins, run.postgres_url)
        pg_dep.register_bulk(clients)
        pg_dep.register_basic()
        starters[POSTGRES] = lambda: with_database(
            start_tokensmith(run.procs, pg_dep, work, cpus=SERVER_CPUS), backends
        )
        if args.llhttp:
            starters[POSTGRES_LLHTTP] = lambda: with_database(
                start_tokensmith(run.procs, pg_dep, work, lane="llhttp", cpus=SERVER_CPUS), backends
            )
    if not node_skip:
        starters[NODE] = lambda: start_node(run.procs, clients, work, adapter="map", cpus=SERVER_CPUS)
    plan = {"s1": list(starters), "s2": [BASE, POSTGRES, LLHTTP, POSTGRES_LLHTTP, NODE]}
    run.log(f"pinned servers: {', '.join(starters)}")
    results["servers"] = measure(run, starters, clients, plan, run.settings)
    access_log = dep.root / "var" / "access.log"
    if not args.skip_accesslog and access_log.exists():
        with access_log.open("rb") as lines:
            results["access_log_lines"] = sum(1 for _ in lines)
    if pg_dep is not None and backends is not None and not args.skip_instances:
        run.log("tokensmith on PostgreSQL: 1 instance and 2 instances behind a balancer, whole machine")
        whole = Settings(
            args.rounds,
            args.duration,
            args.warmup,
            args.connections,
            None,
            args.retries,
            args.disturbed,
            run.calm,
        )

        def instances(count: int, label: str) -> Server:
            return with_database(start_instances(run.procs, pg_dep, work, count, label=label), backends)

        entries = measure(
            run,
            {ONE: lambda: instances(1, ONE), TWO: lambda: instances(2, TWO)},
            clients,
            {"s1": [ONE, TWO], "s2": [ONE, TWO]},
            whole,
        )
        results["instances"] = {"1": entries[ONE], "2": entries[TWO]}


def tree_commit(tree: Path) -> str | None:
    """The commit a --before tree was made from: `git archive` writes it into the tarball's
    pax header, not the files, so this is only known for a git checkout."""
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None if done.returncode == 0 else None


# -- the report ---------------------------------------------------------------------------------


def _s(results: dict, label: str, key: str) -> dict | None:
    entry = results.get("servers", {}).get(label) or {}
    return entry.get("scenarios", {}).get(key)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _rps(summary: dict | None) -> float | None:
    return summary.get("rps") if summary else None


def _per_cpu_s(summary: dict | None) -> float | None:
    if not summary or not summary.get("rps") or not summary.get("server_cpu_pct"):
        return None
    return round(summary["rps"] / (summary["server_cpu_pct"] / 100), 1)


def _f(value: float | None, digits: int = 0) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _row(label: str, summary: dict | None, ratio: float | None) -> str:
    if not summary:
        return f"| {label} | not measured | | | | | | |"
    if summary["medians_include_disturbed"]:
        rounds = f"{summary['rounds_used']}, all disturbed"
    else:
        rounds = f"{summary['rounds_used']}" + (
            f" (+{summary['rounds_disturbed']} disturbed, not used)" if summary["rounds_disturbed"] else ""
        )
    return (
        f"| {label} | {_f(summary['rps'])} | {_f(summary['p50_ms'], 2)} | {_f(summary['p99_ms'], 2)} |"
        f" {_f(summary['server_cpu_pct'])}% | {_f(_per_cpu_s(summary))} | {rounds} | {_f(ratio, 3)} |"
    )


def comparisons(results: dict) -> list[dict]:
    """Each comparison: its title, the rows (label, summary, ratio to the reference), the
    target's ratio and floor."""
    out = []

    def add(
        title: str, key: str, rows: list[tuple[str, str]], ref: str, floor: float | None, subject: str
    ) -> None:
        """Rows of *key* with their rps over *ref*'s; the target is *subject*'s ratio."""
        ref_rps = _rps(_s(results, ref, key))
        table = [
            (name, _s(results, label, key), _ratio(_rps(_s(results, label, key)), ref_rps))
            for name, label in rows
        ]
        measured = _ratio(_rps(_s(results, subject, key)), ref_rps)
        out.append(
            {
                "title": title,
                "scenario": key,
                "rows": table,
                "floor": floor,
                "measured": measured,
                "per_cpu": False,
            }
        )

    if BEFORE in results.get("servers", {}):
        add(
            "A. before vs this tree (access log off), scenario 1",
            "s1",
            [(BEFORE, BEFORE), (BASE, BASE)],
            BEFORE,
            0.95,
            BASE,
        )
    if ACCESSLOG in results.get("servers", {}):
        add(
            "C. access log on (JSON to a file) vs off, scenario 1",
            "s1",
            [(BASE + " (off)", BASE), (ACCESSLOG, ACCESSLOG)],
            BASE,
            0.9,
            ACCESSLOG,
        )
    if POSTGRES in results.get("servers", {}):
        for key, floor in (("s1", 1.0), ("s2", None)):
            add(
                f"B. PostgreSQL vs SQLite vs node-oidc, scenario {key[1]}",
                key,
                [(NODE, NODE), (BASE + " (SQLite)", BASE), (POSTGRES, POSTGRES)],
                NODE,
                floor,
                POSTGRES,
            )
    if POSTGRES_LLHTTP in results.get("servers", {}):
        # The same target on the opt-in lane, reported beside (never instead of) the default's.
        for key, floor in (("s1", 1.0), ("s2", None)):
            add(
                f"B'. PostgreSQL vs SQLite vs node-oidc on the llhttp lane, scenario {key[1]}",
                key,
                [(NODE, NODE), (LLHTTP + " (SQLite)", LLHTTP), (POSTGRES_LLHTTP, POSTGRES_LLHTTP)],
                NODE,
                floor,
                POSTGRES_LLHTTP,
            )
    instances = results.get("instances")
    if instances:
        servers = {ONE: instances["1"], TWO: instances["2"]}
        for key, floor in (("s1", 0.9), ("s2", None)):
            sub = {"servers": servers}
            ref_s, two_s = _s(sub, ONE, key), _s(sub, TWO, key)
            measured = _ratio(_per_cpu_s(two_s), _per_cpu_s(ref_s))
            out.append(
                {
                    "title": f"B. PostgreSQL, 1 vs 2 instances behind the balancer (whole machine), scenario {key[1]}",
                    "scenario": key,
                    "rows": [("1 instance", ref_s, 1.0 if ref_s else None), ("2 instances", two_s, measured)],
                    "floor": floor,
                    "measured": measured,
                    "per_cpu": True,
                }
            )
    return out


def markdown(results: dict) -> str:
    meta, settings = results["meta"], results["settings"]
    lines = [
        f"Comparison run, {meta['started']}, took {meta.get('duration_s', 0) / 60:.1f} min ({results['status']};"
        f" {meta.get('calm_waited_s', 0):.0f} s waiting for other processes to quiet down)."
        f" Each figure is the median of {settings['rounds']} round(s) of {settings['duration']} s after"
        f" {settings['warmup']} s warmup, {settings['connections']} connections, 1 registered mutual-TLS client.",
        f"Command: `{' '.join(['bench/compare.py', *meta['argv']])}`",
        "",
    ]
    for comp in comparisons(results):
        ratio_head = "ratio per CPU-s" if comp["per_cpu"] else "ratio (rps)"
        lines += [
            f"### {comp['title']}",
            "",
            f"| server | rps | p50 ms | p99 ms | CPU | req/CPU-s | rounds used | {ratio_head} |",
            "|---|---:|---:|---:|---:|---:|---|---:|",
            *(_row(name, summary, ratio) for name, summary, ratio in comp["rows"]),
            "",
        ]
        if comp["floor"] is not None:
            met = (
                "n/a"
                if comp["measured"] is None
                else ("yes" if comp["measured"] >= comp["floor"] else "**no**")
            )
            lines += [f"Target >= {comp['floor']}x: measured {_f(comp['measured'], 3)}x, met: {met}.", ""]
    if results.get("access_log_lines") is not None:
        lines += [f"The access log had {results['access_log_lines']:,} lines at the end.", ""]
    m, v, g = meta["machine"], meta["versions"], meta["git"]
    lines += [
        "### Machine",
        "",
        f"- {m.get('nproc')} CPUs ({m.get('cpu_model')}), {m.get('memory_gib')} GiB, kernel {m.get('kernel')},"
        f" {m.get('os')}; Python {v.get('python')}, Hypercorn {v.get('hypercorn')}, Node {v.get('node', '-')},"
        f" oidc-provider {v.get('oidc_provider', '-')}; tokensmith commit {str(g.get('commit'))[:12]},"
        f" {g.get('uncommitted_files')} uncommitted file(s)",
        f"- load average at start {meta['loadavg_at_start']}, at end {meta.get('loadavg_at_end')}",
        "",
    ]
    if results["notes"]:
        lines += ["### Notes", "", *(f"- {note}" for note in results["notes"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not LOADGEN.exists():
        subprocess.run(["make", "-s", "-C", str(LOADGEN.parent)], check=True)
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="tokensmith-compare-"))
    args.out.mkdir(parents=True, exist_ok=True)
    with Procs() as procs:
        run = Run(args, work, procs)
        run.calm = Calm(args.calm_wait, args.calm_budget)
        run.settings = Settings(
            args.rounds,
            args.duration,
            args.warmup,
            args.connections,
            "1",
            args.retries,
            args.disturbed,
            run.calm,
        )
        results = run.results
        results["meta"] = {
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "argv": sys.argv[1:] if argv is None else argv,
            "machine": sysinfo.machine(),
            "versions": sysinfo.versions(),
            "git": sysinfo.git_state(),
            "loadavg_at_start": os.getloadavg(),
        }
        results["settings"] = {
            "rounds": args.rounds,
            "duration": args.duration,
            "warmup": args.warmup,
            "connections": args.connections,
            "retries": args.retries,
            "disturbed_pct": args.disturbed,
            "calm_wait_s": args.calm_wait,
        }
        run.note(
            f"A round during which other processes used more than {args.disturbed:.0f}% of a CPU is"
            f" marked disturbed and run again, up to {args.retries} extra round(s) per scenario and"
            " server; medians use the undisturbed rounds when there are any."
        )
        if args.postgres:
            run.note(
                "PostgreSQL rows: the server's CPU includes the PostgreSQL backends of the run's"
                " database; the instances comparison also includes the balancer's CPU."
            )
        try:
            with postgres_schema(args.postgres) as url:
                run.postgres_url = url
                execute(run, args, work)
            results["status"] = "complete"
        except (Exception, KeyboardInterrupt, SystemExit) as exc:
            results["status"] = "incomplete"
            results["error"] = f"{type(exc).__name__}: {exc}"
            run.log(f"stopped early: {results['error']}")
        finally:
            results["meta"]["duration_s"] = round(time.time() - started, 1)
            results["meta"]["calm_waited_s"] = round(run.calm.waited_s, 1)
            results["meta"]["loadavg_at_end"] = os.getloadavg()
            results["comparisons"] = [
                {k: v for k, v in comp.items() if k != "rows"} for comp in comparisons(results)
            ]
            md = markdown(results)
            text = json.dumps(results, indent=1) + "\n"
            (args.out / f"{args.name}.json").write_text(text)
            (args.out / f"{args.name}-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(text)
            (args.out / f"{args.name}.md").write_text(md)
            print("\n" + md)
    if not args.keep_workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if results["status"] == "complete" else 1


if __name__ == "__main__":
    sys.exit(main())
