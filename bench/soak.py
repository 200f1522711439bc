#!/usr/bin/env python3
"""Soak: tokensmith under a steady mixed load for a long time, watching memory and descriptors.

    .venv/bin/python bench/soak.py [--duration 600] [--clients 1000] [--interval 10]

One tokensmith (one worker, pinned to CPU 0) with --clients registered mutual-TLS clients.
Four loadgen processes (pinned to CPU 1) run for the whole --duration at once: scenario 1
(keep-alive mutual TLS, 16 connections), scenario 2 (new connection per request, 4),
scenario 3 (client_secret_basic, 2) and scenario 4 (introspection, 2). Beside them a thread
runs the refresh_token grant: a password grant, then refresh after refresh on a new TLS
connection each, always with the refresh token the last answer rotated in. Every --interval
seconds it samples the server's resident memory, open file descriptors and database size.

It reports the samples, the RSS growth from the first sample after --settle seconds to the
last, and each loadgen's totals, in bench/results/soak.json and soak.md. Exit status 1 if the
server died, a loadgen failed, a refresh failed, or the open descriptors kept growing (leak suspected);
otherwise 0. RSS growth is reported, not judged: caches legitimately fill up.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.load import SCENARIOS, Settings, loadgen_argv  # noqa: E402
from harness.procs import Procs  # noqa: E402
from harness.servers import (  # noqa: E402
    ROOT,
    TOKENSMITH,
    Clients,
    Deployment,
    Server,
    fetch_token,
    post,
    start_tokensmith,
)

MIX = {"s1": 16, "s2": 4, "s3": 2, "s4": 2}  # connections per scenario
PASSWORD = "soak-password-not-secret"


class RefreshLoop(threading.Thread):
    """The refresh_token grant in the mix, one request at a time (RFC 6749 §6): each answer's
    new refresh token is the next request's, so a single failure would break the chain; it
    is counted, and the chain starts again from a password grant."""

    def __init__(self, server: Server, cafile: Path, client: tuple[str, str], seconds: float):
        super().__init__(daemon=True)
        self.server, self.cafile, self.client, self.seconds = server, cafile, client, seconds
        self.latencies_ms: list[float] = []
        self.errors: list[str] = []

    def _token(self, form: dict[str, str]) -> str | None:
        started = time.monotonic()
        try:
            status, data = post(
                self.server.base, "/oauth2/token", form, cafile=self.cafile, basic=self.client, timeout=30
            )
        except OSError as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return None
        if status != 200 or "refresh_token" not in data:
            self.errors.append(f"{status} {data}")
            return None
        self.latencies_ms.append((time.monotonic() - started) * 1000)
        return str(data["refresh_token"])

    def run(self) -> None:
        deadline = time.monotonic() + self.seconds
        refresh = None
        while time.monotonic() < deadline:
            if refresh is None:
                refresh = self._token({"grant_type": "password", "username": "soak", "password": PASSWORD})
            else:
                refresh = self._token({"grant_type": "refresh_token", "refresh_token": refresh})

    def report(self) -> dict[str, object]:
        done = sorted(self.latencies_ms)
        return {
            "requests": len(done) + len(self.errors),
            "rps": len(done) / self.seconds,
            "p50_ms": round(statistics.median(done), 3) if done else None,
            "p99_ms": round(done[int(0.99 * (len(done) - 1))], 3) if done else None,
            "errors": {"total": len(self.errors), "first": self.errors[:3]},
        }


def register_refresh_client(dep: Deployment) -> tuple[str, str]:
    """A password and refresh_token client, and the user it signs in, with the CLI."""
    shown = json.loads(
        dep.cli(
            "sp",
            "add",
            "soak-refresh",
            "--grant-type",
            "password",
            "--grant-type",
            "refresh_token",
            "--auth-method",
            "client_secret_basic",
        )
    )
    subprocess.run(
        [str(TOKENSMITH), "user", "add", "soak", "--password-stdin", "--conf", str(dep.conf)],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return shown["client_id"], shown["client_secret"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=600, help="seconds of load (600)")
    p.add_argument("--clients", type=int, default=1000, help="registered mutual-TLS clients (1000)")
    p.add_argument("--interval", type=float, default=10, help="seconds between samples (10)")
    p.add_argument("--settle", type=float, default=30, help="seconds before the RSS baseline (30)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--dropins", type=Path, default=ROOT / "dropins")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.interval <= 0 or args.clients < 1:
        p.error("--duration, --interval and --clients must be positive")
    return args


def sample(server, db: Path, started: float) -> dict[str, float]:  # noqa: ANN001
    size = sum(f.stat().st_size for f in db.parent.glob(db.name + "*") if f.exists())
    return {
        "t_s": round(time.monotonic() - started, 1),
        "rss_mb": round(server.proc.rss_mb(), 1),
        "fds": server.proc.fds(),
        "db_mb": round(size / 2**20, 1),
        "cpu_s": round(server.proc.cpu_s(), 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="tokensmith-soak-"))
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "mix": MIX,
        "samples": [],
        "loadgen": {},
        "problems": [],
    }
    loadgens: dict[str, subprocess.Popen[str]] = {}
    try:
        with Procs() as procs:
            clients = Clients.generate(work / "clients", args.clients, min(32, args.clients))
            dep = Deployment.create(work / "tokensmith", clients, args.dropins)
            dep.register_bulk(clients)
            dep.register_basic()
            refresh_client = register_refresh_client(dep)
            server = start_tokensmith(procs, dep, work, cpus="0")
            token = fetch_token(server, clients)
            started = time.monotonic()
            refreshing = RefreshLoop(server, clients.server_cert, refresh_client, args.duration)
            refreshing.start()
            for key, conns in MIX.items():
                settings = Settings(1, args.duration, 0, conns, "1")
                argv = loadgen_argv(SCENARIOS[key], server, clients, settings, token)
                # --timeout 30: the KDF-bound scenarios queue behind one another under the mix
                loadgens[key] = subprocess.Popen(
                    argv + ["--timeout", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
            deadline = started + args.duration + 60
            while any(p.poll() is None for p in loadgens.values()) and time.monotonic() < deadline:
                if not server.proc.alive():
                    result["problems"].append("the server died")
                    break
                result["samples"].append(sample(server, dep.root / "var" / "tokensmith.db", started))
                s = result["samples"][-1]
                print(
                    f"[{s['t_s']:6.0f} s] rss {s['rss_mb']:.1f} MiB, fds {s['fds']}, db {s['db_mb']} MiB",
                    flush=True,
                )
                time.sleep(args.interval)
            for key, proc in loadgens.items():
                try:
                    out, err = proc.communicate(timeout=max(1, deadline - time.monotonic()))
                    result["loadgen"][key] = json.loads(out) if out.strip() else {"failed": err.strip()}
                except (subprocess.TimeoutExpired, ValueError) as exc:
                    result["loadgen"][key] = {"failed": f"{type(exc).__name__}"}
                if "failed" in result["loadgen"][key]:
                    result["problems"].append(f"loadgen {key} failed: {result['loadgen'][key]['failed']}")
            refreshing.join(max(1, deadline - time.monotonic()))
            result["loadgen"]["refresh"] = refreshing.report()
            if refreshing.errors:
                result["problems"].append(
                    f"refresh: {len(refreshing.errors)} failed, first {refreshing.errors[0]}"
                )
            if server.proc.alive():
                result["samples"].append(sample(server, dep.root / "var" / "tokensmith.db", started))
    finally:
        for proc in loadgens.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    judge(result, args)
    (args.out / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "soak.md").write_text(markdown(result))
    print(markdown(result))
    return 1 if result["problems"] else 0


def judge(result: dict, args: argparse.Namespace) -> None:
    settled = [s for s in result["samples"] if s["t_s"] >= args.settle] or result["samples"]
    if len(settled) < 2:
        return
    first, last = settled[0], settled[-1]
    minutes = max((last["t_s"] - first["t_s"]) / 60, 1e-9)
    result["rss_growth_mb"] = round(last["rss_mb"] - first["rss_mb"], 1)
    result["rss_growth_mb_per_min"] = round(result["rss_growth_mb"] / minutes, 2)
    result["rss_max_mb"] = max(s["rss_mb"] for s in result["samples"])
    half = settled[len(settled) // 2 :]
    # Descriptors: the connection counts are fixed, so a count that is higher in every sample of
    # the second half than anywhere in the first is a leak, not noise.
    if min(s["fds"] for s in half) > max(s["fds"] for s in settled[: len(settled) // 2]) + 8:
        result["problems"].append(f"open descriptors kept growing: {first['fds']} -> {last['fds']}")


def markdown(result: dict) -> str:
    st = result["settings"]
    out = [
        f"Soak: {st['duration']:.0f} s of mixed load, {st['clients']:,} registered clients;"
        f" connections {result['mix']}.",
        "",
        "| scenario | requests | rps | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, r in result["loadgen"].items():
        name = key[1:] if key in MIX else key
        if "failed" in r:
            out.append(f"| {name} | failed: {r['failed']} | | | | |")
        else:
            out.append(
                f"| {name} | {r['requests']:,} | {r['rps']:.0f} | {r['p50_ms']} |"
                f" {r['p99_ms']} | {r['errors']['total']} |"
            )
    out += [
        "",
        "| t (s) | RSS (MiB) | open fds | database (MiB) | server CPU (s) |",
        "|---:|---:|---:|---:|---:|",
    ]
    out += [
        f"| {s['t_s']:.0f} | {s['rss_mb']} | {s['fds']} | {s['db_mb']} | {s['cpu_s']} |"
        for s in result["samples"]
    ]
    out += [
        "",
        f"RSS growth after settling: {result.get('rss_growth_mb')} MiB"
        f" ({result.get('rss_growth_mb_per_min')} MiB/min), max {result.get('rss_max_mb')} MiB.",
        "Problems: " + ("; ".join(result["problems"]) or "none"),
    ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
