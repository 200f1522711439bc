"""The four scenarios, run with bench/loadgen, and their medians over rounds.

Each round is one loadgen process (pinned with ``taskset`` unless told otherwise) that reports
JSON: rps, p50/p99, errors and its own CPU. Rounds are interleaved across the servers being
compared. A scenario's result is the median of each figure over its rounds, and the highest
loadgen CPU of any round, so a loadgen-bound round shows.
"""

from __future__ import annotations

import base64
import json
import os
import resource
import statistics
import subprocess
import time
from dataclasses import dataclass, field

from .servers import ROOT, Clients, Server

__all__ = [
    "LOADGEN",
    "Calm",
    "Scenario",
    "SCENARIOS",
    "Settings",
    "loadgen_argv",
    "run_scenario",
    "summarize",
    "loadgen_bound",
]

LOADGEN = ROOT / "bench" / "loadgen" / "loadgen"
FORM = "Content-Type: application/x-www-form-urlencoded"
#: loadgen's own CPU above this share of one core means it may be the bottleneck.
LOADGEN_BOUND_PCT = 80.0


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    path: str
    mtls: bool  # present the real clients' certificates (a cert-list with client_ids)
    basic: bool  # authenticate with client_secret_basic
    new_conn: bool
    introspect: bool = False


SCENARIOS = {
    "s1": Scenario(
        "s1",
        "client_credentials, self_signed_tls_client_auth, keep-alive",
        "/oauth2/token",
        mtls=True,
        basic=False,
        new_conn=False,
    ),
    "s2": Scenario(
        "s2",
        "client_credentials, self_signed_tls_client_auth, new TLS connection per request",
        "/oauth2/token",
        mtls=True,
        basic=False,
        new_conn=True,
    ),
    "s3": Scenario(
        "s3",
        "client_credentials, client_secret_basic, keep-alive",
        "/oauth2/token",
        mtls=False,
        basic=True,
        new_conn=False,
    ),
    "s4": Scenario(
        "s4",
        "introspection of a certificate-bound token (Basic), keep-alive",
        "/oauth2/introspect",
        mtls=False,
        basic=True,
        new_conn=False,
        introspect=True,
    ),
}


@dataclass
class Calm:
    """Waiting, before a round, for other processes to quiet down: at most *per_round_s* per
    round and *budget_s* in all (0 turns it off). The machine may be shared with test runs."""

    per_round_s: float = 0.0
    budget_s: float = 0.0
    waited_s: float = 0.0

    def wait(self, server: Server, threshold_pct: float) -> float:
        if self.per_round_s <= 0 or self.waited_s >= self.budget_s:
            return 0.0
        started = time.monotonic()
        while True:
            busy0, cpu0, self0, t0 = (
                _machine_busy_s(),
                server.proc.cpu_s(),
                time.process_time(),
                time.monotonic(),
            )
            time.sleep(1.0)
            ours = server.proc.cpu_s() - cpu0 + time.process_time() - self0
            other = (_machine_busy_s() - busy0 - ours) / (time.monotonic() - t0) * 100
            spent = time.monotonic() - started
            if other <= threshold_pct or spent >= self.per_round_s or self.waited_s + spent >= self.budget_s:
                self.waited_s += spent
                return round(spent, 1)
            time.sleep(1.0)


@dataclass(frozen=True)
class Settings:
    rounds: int
    duration: float
    warmup: float
    connections: int
    loadgen_cpus: str | None = "1"
    #: extra rounds allowed to replace rounds that other processes disturbed
    retries: int = 0
    #: CPU of other processes (% of one core) that makes a round disturbed
    disturbed_pct: float = 15.0
    calm: Calm = field(default_factory=Calm)


def loadgen_argv(
    scenario: Scenario, server: Server, clients: Clients, settings: Settings, token: str | None
) -> list[str]:
    argv = [
        str(LOADGEN),
        "--url",
        server.base + scenario.path,
        "--cacert",
        str(clients.server_cert),
        "-H",
        FORM,
        "-c",
        str(settings.connections),
        "-d",
        str(settings.duration),
        "--warmup",
        str(settings.warmup),
        "--expect-status",
        "200",
        "--json",
    ]
    if scenario.mtls:
        argv += [
            "--cert-list",
            str(clients.cert_list),
            "--body",
            "grant_type=client_credentials&client_id={client_id}",
        ]
    elif scenario.introspect:
        argv += ["--body", f"token={token}"]
    else:
        argv += ["--body", "grant_type=client_credentials"]
    if scenario.basic:
        raw = f"{server.basic[0]}:{server.basic[1]}".encode()
        argv += ["-H", "Authorization: Basic " + base64.b64encode(raw).decode()]
    if scenario.new_conn:
        argv.append("--new-conn")
    if settings.loadgen_cpus:
        argv = ["taskset", "-c", settings.loadgen_cpus, *argv]
    return argv


def _machine_busy_s() -> float:
    """CPU seconds all processes on the machine have used (all CPUs), from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: user + nice + system. Interrupt time is
    # left out: the loopback traffic of the benchmark itself is processed there, and it is not
    # charged to any process, so counting it would make every round look disturbed.
    return (fields[0] + fields[1] + fields[2]) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_round(argv: list[str], settings: Settings, server: Server) -> dict[str, object]:
    """One loadgen run, plus CPU use over the same wall time, each in % of one core: the
    server's, and everything else's on the machine (other processes disturb the figures)."""
    timeout = settings.warmup + settings.duration + 60
    cpu0, busy0, kids0, self0 = server.proc.cpu_s(), _machine_busy_s(), _children_cpu_s(), time.process_time()
    t0 = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"failed": f"loadgen did not finish within {timeout:.0f} s"}
    wall = time.monotonic() - t0
    server_s = server.proc.cpu_s() - cpu0
    ours = server_s + (_children_cpu_s() - kids0) + (time.process_time() - self0)
    server_cpu = round(server_s / wall * 100, 1)
    other_cpu = round(max(0.0, _machine_busy_s() - busy0 - ours) / wall * 100, 1)
    try:  # loadgen prints its report also when it exits 1 because no response arrived
        result = json.loads(done.stdout)
    except ValueError:
        result = None
    if not isinstance(result, dict) or (done.returncode != 0 and result.get("requests")):
        return {"failed": (done.stderr.strip() or f"exit status {done.returncode}")[:500]}
    if done.returncode != 0:
        # Data, not a harness failure: no response completed within the measured window
        # (e.g. every response takes longer than a smoke round lasts).
        result["no_responses"] = True
    result["server_cpu_pct"] = server_cpu
    result["other_cpu_pct"] = other_cpu
    return result


def _median(rounds: list[dict[str, object]], key: str) -> float | None:
    values = [r[key] for r in rounds if r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None  # type: ignore[arg-type]


def run_scenario(
    scenario: Scenario,
    targets: list[tuple[Server, str | None]],
    clients: Clients,
    settings: Settings,
    log=print,
) -> dict[str, dict[str, object]]:  # noqa: ANN001
    """Run *settings.rounds* rounds on each server of *targets* (server, token for scenario 4),
    interleaved: round 1 on every server, then round 2, and so on, so that whatever else the
    machine does falls on all of them alike. Per server: the medians, the CPU peaks, every round.

    The machine may be shared: a round during which other processes used more than
    *settings.disturbed_pct* of a CPU is marked disturbed and, up to *settings.retries* extra
    rounds, run again. The medians use the undisturbed rounds if there are any.
    """
    argvs = {
        server.name: loadgen_argv(scenario, server, clients, settings, token) for server, token in targets
    }
    rounds: dict[str, list[dict[str, object]]] = {name: [] for name in argvs}
    calm = dict.fromkeys(argvs, 0)
    for number in range(settings.rounds + settings.retries):
        pending = [
            server
            for server, _ in targets
            if calm[server.name] < settings.rounds
            and not (number >= settings.rounds and "failed" in rounds[server.name][-1])
        ]
        for server in pending:
            waited = settings.calm.wait(server, settings.disturbed_pct)
            result = run_round(argvs[server.name], settings, server)
            result["calm_wait_s"] = waited
            rounds[server.name].append(result)
            if "failed" in result:
                log(f"    {server.name} round {number + 1}: FAILED: {result['failed']}")
                continue
            result["disturbed"] = float(result["other_cpu_pct"]) > settings.disturbed_pct  # type: ignore[arg-type]
            calm[server.name] += not result["disturbed"]
            log(
                f"    {server.name} round {number + 1}: {result['rps']:.0f} rps, p50 {result['p50_ms']} ms,"
                f" p99 {result['p99_ms']} ms, errors {result['errors']['total']},"  # type: ignore[index]
                f" loadgen cpu {result['cpu_pct']:.0f}%, server cpu {result['server_cpu_pct']:.0f}%,"
                f" other {result['other_cpu_pct']:.0f}%"
                + (f", waited {waited:.0f} s for calm" if waited >= 2 else "")
                + (" (no response completed in the window)" if result.get("no_responses") else "")
                + (" DISTURBED" if result["disturbed"] else "")
            )
    return {name: summarize(scenario, rounds[name], argvs[name]) for name in argvs}


def summarize(scenario: Scenario, rounds: list[dict[str, object]], argv: list[str]) -> dict[str, object]:
    ok = [r for r in rounds if "failed" not in r]
    good = [r for r in ok if not r["disturbed"]] or ok
    for r in good:
        r["errors_total"] = r["errors"]["total"]  # type: ignore[index]
    summary: dict[str, object] = {
        "scenario": scenario.key,
        "rounds_used": len(good),
        "rounds_disturbed": sum(1 for r in ok if r["disturbed"]),
        "medians_include_disturbed": any(r["disturbed"] for r in good),
        "rounds_failed": len(rounds) - len(ok),
        "rps": _median(good, "rps"),
        "p50_ms": _median(good, "p50_ms"),
        "p99_ms": _median(good, "p99_ms"),
        "errors": _median(good, "errors_total"),
        "errors_sum": sum(int(r["errors_total"]) for r in good),  # type: ignore[call-overload]
        "loadgen_cpu_pct_max": max((float(r["cpu_pct"]) for r in good), default=None),  # type: ignore[arg-type]
        "server_cpu_pct": _median(good, "server_cpu_pct"),
        "other_cpu_pct_max": max((float(r["other_cpu_pct"]) for r in good), default=None),  # type: ignore[arg-type]
        "rounds_without_responses": sum(1 for r in good if r.get("no_responses")),
        "tls_version": good[0].get("tls_version") if good else None,
        "loadgen_argv": [a for a in argv if not a.startswith("Authorization")],
        "rounds": rounds,
    }
    if scenario.new_conn:
        summary["handshake_p50_ms"] = _median(good, "handshake_p50_ms")
    for r in good:
        del r["errors_total"]
    return summary


def loadgen_bound(summary: dict[str, object]) -> bool:
    cpu = summary.get("loadgen_cpu_pct_max")
    return cpu is not None and float(cpu) > LOADGEN_BOUND_PCT  # type: ignore[arg-type]
