"""The results as Markdown, the ratios and the targets of the benchmark issue.

tokensmith is measured on two HTTP/1.1 lanes of one deployment: "tokensmith" is the default
lane (Hypercorn's h11) and "tokensmith-llhttp" the opt-in one (``http1="llhttp"``). The issue's
targets apply to the default lane; the llhttp lane's ratios are shown beside them. Results from
before the lanes were measured apart have no ``lanes`` key: their "tokensmith" is described as
of an unrecorded lane rather than guessed.
"""

from __future__ import annotations

import re
from pathlib import Path

from .load import LOADGEN_BOUND_PCT, SCENARIOS

__all__ = ["targets", "observations", "markdown", "update_docs", "BEGIN", "END"]

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
TS, TSL, NODE, BARE = "tokensmith", "tokensmith-llhttp", "node-oidc", "bare-hypercorn"
PG = "tokensmith-postgres"
ORDER = (TS, TSL, PG, NODE, BARE)
LANE_TEXT = {"hypercorn": "default lane, Hypercorn h11", "llhttp": 'llhttp lane, http1="llhttp"'}


def _lane(results: dict, server: str) -> str | None:
    """ "hypercorn" or "llhttp" for a tokensmith label, None if not tokensmith or not recorded."""
    return results.get("lanes", {}).get(server)


def _who(results: dict, server: str) -> str:
    """A server's label with its HTTP/1.1 lane, for sentences."""
    lane = _lane(results, server)
    if lane:
        return f"{server} ({LANE_TEXT.get(lane, lane)})"
    if server == TS and "lanes" not in results:
        return f"{server} (HTTP/1.1 lane not recorded)"
    return server


def _lane_name(results: dict, server: str) -> str:
    """The prefix of a target row: which lane it holds for."""
    lane = _lane(results, server)
    return {"hypercorn": "default lane", "llhttp": "llhttp lane"}.get(lane or "", server)


def _servers(results: dict) -> list[str]:
    """The servers of the results, tokensmith's lanes first, then the references, then others."""
    present = list(results["servers"])
    return [s for s in ORDER if s in present] + [s for s in present if s not in ORDER]


def _scen(results: dict, server: str, size: int | str, key: str) -> dict | None:
    entry = results["servers"].get(server, {}).get(str(size))
    return entry["scenarios"].get(key) if entry else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _rps(summary: dict | None) -> float | None:
    return summary.get("rps") if summary else None


def _per_cpu_s(summary: dict | None) -> float | None:
    """Requests per CPU-second of the server's processes (rps over their CPU in cores)."""
    if not summary or not summary.get("rps") or not summary.get("server_cpu_pct"):
        return None
    return round(summary["rps"] / (summary["server_cpu_pct"] / 100), 1)


def _bare(results: dict, key: str) -> dict | None:
    """The bare app is measured once (it has no clients): at the first size."""
    return _scen(results, BARE, results["sizes"][0], key)


def targets(results: dict) -> list[dict[str, object]]:
    """Each target of the issue: what it asks, what this run measured, and whether it holds."""
    first, last = results["sizes"][0], results["sizes"][-1]
    rows: list[dict[str, object]] = []

    def add(name: str, wanted: str, value: float | None, ok: bool | None, unit: str = "") -> None:
        rows.append(
            {
                "target": name,
                "wanted": wanted,
                "value": value,
                "unit": unit,
                "met": None if value is None else ok,
            }
        )

    ts = _lane_name(results, TS)
    for key, floor in (("s1", 0.75), ("s2", 1.0)):
        r = _ratio(_rps(_scen(results, TS, first, key)), _rps(_scen(results, NODE, first, key)))
        add(
            f"{ts}: scenario {key[1]} throughput vs node-oidc",
            f">= {floor}x",
            r,
            r is not None and r >= floor,
            "x",
        )
    r = _ratio(_rps(_scen(results, TS, first, "s1")), _rps(_bare(results, "s1")))
    add(f"{ts}: scenario 1 throughput vs bare-hypercorn", ">= 0.8x", r, r is not None and r >= 0.8, "x")
    s1 = _scen(results, TS, first, "s1")
    p99 = s1.get("p99_ms") if s1 else None
    add(f"{ts}: scenario 1 p99", "<= 20 ms", p99, p99 is not None and p99 <= 20, " ms")
    if last != first:
        for key in ("s1", "s2"):
            r = _ratio(_rps(_scen(results, TS, last, key)), _rps(_scen(results, TS, first, key)))
            add(
                f"{ts}: scenario {key[1]} with {last:,} clients vs {first}",
                ">= 0.9x",
                r,
                r is not None and r >= 0.9,
                "x",
            )
    big = results["servers"].get(TS, {}).get(str(last))
    if big:
        add(
            f"{ts}: startup with {last:,} clients",
            "< 2 s",
            big.get("startup_s"),
            big.get("startup_s") is not None and big["startup_s"] < 2,
            " s",
        )
        rss = max(filter(None, (big.get("rss_ready_mb"), big.get("rss_after_mb"))), default=None)
        add(
            f"{ts}: RSS with {last:,} clients (max of at ready, after load)",
            "< 150 MiB",
            rss,
            rss is not None and rss < 150,
            " MiB",
        )
    reg = [v["total_s"] for v in results.get("registration", {}).values() if v.get("ok")]
    failed = any(not v.get("ok") for v in results.get("registration", {}).values())
    worst = max(reg) if reg and not failed else None
    add(
        f"{ts}: registration to first token (worst size)",
        "< 1 s",
        worst,
        worst is not None and worst < 1,
        " s",
    )
    if PG in results["servers"]:
        r = _ratio(_rps(_scen(results, PG, first, "s1")), _rps(_scen(results, NODE, first, "s1")))
        add(
            "PostgreSQL store: scenario 1 throughput vs node-oidc",
            ">= 1.0x",
            r,
            r is not None and r >= 1.0,
            "x",
        )
    instances = results.get("instances", {})
    if instances:
        r = _ratio(
            _per_cpu_s(instances.get("2", {}).get("scenarios", {}).get("s1")),
            _per_cpu_s(instances.get("1", {}).get("scenarios", {}).get("s1")),
        )
        add(
            "PostgreSQL: 2 instances vs 1, requests per CPU-second (scenario 1)",
            ">= 0.9x",
            r,
            r is not None and r >= 0.9,
            "x",
        )
    workers = results.get("workers", {})
    if workers:
        r = _ratio(
            _rps(workers.get("2", {}).get("scenarios", {}).get("s1")),
            _rps(workers.get("1", {}).get("scenarios", {}).get("s1")),
        )
        add(
            f"{ts}: 2 workers vs 1 (scenario 1, whole machine)", ">= 1.8x", r, r is not None and r >= 1.8, "x"
        )

    def rss_after(lane: str) -> None:
        for size in results["sizes"]:
            entry = results["servers"].get(lane, {}).get(str(size))
            if entry is None and size != first:
                continue  # a lane may run at the first size only (--llhttp first)
            after = entry.get("rss_after_mb") if entry else None
            add(
                f"{_lane_name(results, lane)}: RSS after load with {_clients(size)}",
                "< 150 MiB",
                after,
                after is not None and after < 150,
                " MiB",
            )

    rss_after(TS)
    if "lanes" in results:  # older results had one tokensmith, of an unrecorded lane
        tsl = _lane_name(results, TSL)
        for key, floor in (("s1", 0.75), ("s2", 1.0)):
            r = _ratio(_rps(_scen(results, TSL, first, key)), _rps(_scen(results, NODE, first, key)))
            add(
                f"{tsl}: scenario {key[1]} throughput vs node-oidc",
                f">= {floor}x",
                r,
                r is not None and r >= floor,
                "x",
            )
        rss_after(TSL)
    return rows


def _clients(n: int) -> str:
    return f"{n:,} client{'s' if n != 1 else ''}"


def observations(results: dict) -> list[str]:
    """What the figures themselves say about where the time goes (derived, not measured)."""
    found = []
    for size in results["sizes"]:
        for key in SCENARIOS:
            ts, tsl = _scen(results, TS, size, key), _scen(results, TSL, size, key)
            r = _ratio(_rps(tsl), _rps(ts))
            if r is None:
                continue
            found.append(
                f"scenario {key[1]} (N={size:,}): the llhttp lane ({TSL}) served {r:.2f}x"
                f" the default lane's ({TS}) rps: {_f(_rps(tsl), 0)} vs {_f(_rps(ts), 0)},"
                f" p99 {_f(tsl.get('p99_ms'), 2)} vs {_f(ts.get('p99_ms'), 2)} ms, server CPU"
                f" {_f(tsl.get('server_cpu_pct'), 0)}% vs {_f(ts.get('server_cpu_pct'), 0)}%."
            )
    for server, by_size in results["servers"].items():
        for size, entry in by_size.items():
            for key, summary in entry.get("scenarios", {}).items():
                cpu, lg = summary.get("server_cpu_pct"), summary.get("loadgen_cpu_pct_max")
                if (
                    cpu is not None
                    and cpu < 80
                    and lg is not None
                    and lg < LOADGEN_BOUND_PCT
                    and summary.get("rps")
                    and not summary.get("medians_include_disturbed")
                ):
                    found.append(
                        f"{_who(results, server)} scenario {key[1]} (N={int(size):,}): the server used"
                        f" only {cpu:.0f}% of its CPU and loadgen {lg:.0f}% of its own,"
                        f" at p50 {summary.get('p50_ms')} ms: its throughput is limited by"
                        " waiting, not by computation."
                    )
    return found


def _f(value: object, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}" if isinstance(value, (int, float)) else str(value)


def _cells(summary: dict | None) -> list[str]:
    """rps, p50, p99, errors, server CPU (% of one core)."""
    if not summary or summary.get("rps") is None:
        return ["–"] * 5 if not summary else ["failed", "–", "–", "–", "–"]
    errors = summary.get("errors")
    cpu = summary.get("server_cpu_pct")
    return [
        _f(summary["rps"], 0),
        _f(summary.get("p50_ms"), 2),
        _f(summary.get("p99_ms"), 2),
        _f(errors, 0) if errors else "0",
        f"{cpu:.0f}%" if cpu is not None else "–",
    ]


def _cpu(*summaries: dict | None) -> str:
    cpus = [s["loadgen_cpu_pct_max"] for s in summaries if s and s.get("loadgen_cpu_pct_max") is not None]
    if not cpus:
        return "–"
    peak = max(cpus)
    return f"{peak:.0f}%" + (" ⚠" if peak > LOADGEN_BOUND_PCT else "")


def markdown(results: dict) -> str:
    meta, st = results["meta"], results["settings"]
    sizes = results["sizes"]
    first = sizes[0]
    has_node = NODE in results["servers"]
    servers = _servers(results)
    out = [
        f"Run: **{meta['mode']}**, {meta['started']}, took {meta.get('duration_s', 0) / 60:.1f} min"
        f" ({results.get('status', '?')}; {meta.get('calm_waited_s', 0):.0f} s spent waiting for other"
        f" processes to quiet down). Each figure is the median of {st['rounds']} round(s)"
        f" of {st['duration']} s after {st['warmup']} s warmup, {st['connections']} connections."
        f" Servers pinned to CPU {st['server_cpus']}, loadgen to CPU {st['loadgen_cpus']}"
        " (`taskset`). rps = requests/s; latency in ms; err = failed requests (median per"
        " round); CPU = the server's CPU use in % of one core; vs X = that row's rps / X's"
        " rps; ⚠ = loadgen above 80% of its core (it may have been the limit).",
        "",
    ]
    if "lanes" in results:
        out += [
            "Two HTTP/1.1 lanes of one tokensmith deployment: **tokensmith** is the default"
            " lane (Hypercorn's h11 serves HTTP/1.1); **tokensmith-llhttp** is the opt-in lane"
            ' (`http1="llhttp"` on the connector: tokensmith\'s own protocol over'
            " httptools/llhttp). Same database, dropins and keys; the targets are the default"
            " lane's unless they say otherwise.",
            "",
        ]
    else:
        out += [
            "These results predate the two-lane harness: the HTTP/1.1 lane **tokensmith** ran"
            " on is not recorded in them.",
            "",
        ]
    if not has_node:
        out += [f"**node-oidc was not measured**: {results.get('node_skipped', 'skipped')}.", ""]

    out += [
        f"### Scenarios ({first:,} registered mutual-TLS client{'s' if first != 1 else ''})",
        "",
        "| scenario | server | rps | p50 | p99 | err | CPU | vs node-oidc | vs bare |"
        " vs default lane | loadgen CPU |",
        "|---|---|" + "---:|" * 9,
    ]
    for key, scenario in SCENARIOS.items():
        found = {server: _scen(results, server, first, key) for server in servers}
        found = {server: summary for server, summary in found.items() if summary}
        if not found:
            continue
        node, bare, ts = found.get(NODE), _bare(results, key), found.get(TS)
        for row, (server, summary) in enumerate(found.items()):
            ours = server in (TS, TSL, PG)
            out.append(
                f"| {f'{key[1]}. {scenario.title}' if row == 0 else ''} | {server} | "
                + " | ".join(
                    _cells(summary)
                    + [
                        _f(_ratio(_rps(summary), _rps(node)), 2) if ours else "",
                        _f(_ratio(_rps(summary), _rps(bare)), 2) if ours else "",
                        _f(_ratio(_rps(summary), _rps(ts)), 2) if server in (TSL, PG) else "",
                        _cpu(summary),
                    ]
                )
                + " |"
            )

    if len(sizes) > 1:
        out += [
            "",
            "### Scale: registered mutual-TLS clients (scenarios 1 and 2)",
            "",
            "| clients | scenario | server | rps | p99 | CPU | vs 1st size | vs node-oidc | vs bare |"
            " vs default lane | loadgen CPU |",
            "|---:|---|---|" + "---:|" * 8,
        ]
        for size in sizes:
            for key in ("s1", "s2"):
                node, ts = _scen(results, NODE, size, key), _scen(results, TS, size, key)
                for server in servers:
                    summary = _scen(results, server, size, key)
                    if server == BARE or not summary:
                        continue
                    ours = server in (TS, TSL)
                    cells = _cells(summary)
                    out.append(
                        f"| {size:,} | {key[1]} | {server} | {cells[0]} | {cells[2]} | {cells[4]} | "
                        f"{_f(_ratio(_rps(summary), _rps(_scen(results, server, first, key))), 2)} | "
                        f"{_f(_ratio(_rps(summary), _rps(node)), 2) if ours else ''} | "
                        f"{_f(_ratio(_rps(summary), _rps(_bare(results, key))), 2) if ours else ''} | "
                        f"{_f(_ratio(_rps(summary), _rps(ts)), 2) if server == TSL else ''} | "
                        f"{_cpu(summary)} |"
                    )

    out += [
        "",
        "### Startup and resident memory",
        "",
        "| server | clients | startup (s) | RSS at ready (MiB) | RSS after load (MiB) |"
        " certificate-bound token |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for server in servers:
        for size, entry in results["servers"][server].items():
            bound = {True: "yes (cnf.x5t#S256 matches)", False: "**no**", None: "n/a"}[entry.get("bound")]
            out.append(
                f"| {server} | {int(size):,} | {_f(entry.get('startup_s'), 2)} | "
                f"{_f(entry.get('rss_ready_mb'))} | {_f(entry.get('rss_after_mb'))} | {bound} |"
            )

    if results.get("registration"):
        out += [
            "",
            "### `tokensmith sp add` to the new client's first token (running server on the"
            " default lane, no restart)",
            "",
            "| registered clients | total (s) | `sp add` process (s) | then to first 200 (s) | attempts |",
            "|---:|---:|---:|---:|---:|",
        ]
        for size, reg in results["registration"].items():
            total = _f(reg.get("total_s"), 3) if reg.get("ok") else f"**failed** ({reg.get('status')})"
            out.append(
                f"| {int(size):,} | {total} | {_f(reg.get('cli_s'), 3)} | "
                f"{_f(reg.get('after_cli_s'), 3)} | {reg.get('attempts')} |"
            )

    workers = results.get("workers", {})
    if workers:
        out += [
            "",
            f"### 1 worker vs 2 workers (default lane; {first:,} client{'s' if first != 1 else ''};"
            " whole machine: neither server nor loadgen pinned)",
            "",
            "| scenario | 1 worker rps | p99 | CPU | 2 workers rps | p99 | CPU | 2w/1w | loadgen CPU |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key in ("s1", "s2"):
            one = workers.get("1", {}).get("scenarios", {}).get(key)
            two = workers.get("2", {}).get("scenarios", {}).get(key)
            if one or two:
                out.append(
                    f"| {key[1]} | {_cells(one)[0]} | {_cells(one)[2]} | {_cells(one)[4]} | "
                    f"{_cells(two)[0]} | {_cells(two)[2]} | {_cells(two)[4]} | "
                    f"{_f(_ratio(_rps(two), _rps(one)), 2)} | {_cpu(one, two)} |"
                )

    instances = results.get("instances", {})
    if instances:
        out += [
            "",
            f"### PostgreSQL: 1 instance vs 2 instances (default lane; {first:,} client{'s' if first != 1 else ''};"
            " one database; behind one TCP balancer in both cases; whole machine)",
            "",
            "| scenario | 1 instance rps | CPU | req/CPU-s | 2 instances rps | CPU | req/CPU-s | 2i/1i per CPU-s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key in ("s1", "s2"):
            one = instances.get("1", {}).get("scenarios", {}).get(key)
            two = instances.get("2", {}).get("scenarios", {}).get(key)
            if one or two:
                out.append(
                    f"| {key[1]} | {_cells(one)[0]} | {_cells(one)[4]} | {_f(_per_cpu_s(one))} | "
                    f"{_cells(two)[0]} | {_cells(two)[4]} | {_f(_per_cpu_s(two))} | "
                    f"{_f(_ratio(_per_cpu_s(two), _per_cpu_s(one)), 2)} |"
                )

    out += ["", "### Targets", "", "| target | wanted | measured | met |", "|---|---|---:|---|"]
    for t in results.get("targets", []):
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        value = _f(t["value"], 3 if t["unit"] in ("x", " s") else 1)
        out.append(
            f"| {t['target']} | {t['wanted']} | {value}{t['unit'] if t['value'] is not None else ''} | {met} |"
        )

    m, v, g = meta["machine"], meta["versions"], meta["git"]
    out += [
        "",
        "### Machine and versions",
        "",
        f"- {m.get('nproc')} CPUs ({m.get('cpu_model')}), {m.get('memory_gib')} GiB, kernel"
        f" {m.get('kernel')}, {m.get('os')}; load average at start {m.get('loadavg_at_start')}",
        f"- Python {v.get('python')}, Hypercorn {v.get('hypercorn')}, Quart {v.get('quart')},"
        f" h11 {v.get('h11')}, httptools {v.get('httptools', '–')}, cryptography {v.get('cryptography')},"
        f" tokensmith {v.get('tokensmith')}",
        f"- Node {v.get('node', '–')}, oidc-provider {v.get('oidc_provider', '–')}",
        f"- OpenSSL: Python {v.get('python_openssl')}; Node {v.get('node_openssl', '–')};"
        f" loadgen (system) {v.get('system_openssl')}",
        f"- tokensmith commit {str(g.get('commit'))[:12]}, {g.get('uncommitted_files')} uncommitted"
        f" file(s) in the working tree ({len(g.get('uncommitted_outside_bench', []))} outside bench/)",
    ]
    seen = observations(results)
    if seen:
        out += ["", "### Observations (derived from the figures)", ""] + [f"- {o}" for o in seen]
    if results.get("notes"):
        out += ["", "### Notes", ""] + [f"- {note}" for note in results["notes"]]
    return "\n".join(out) + "\n"


def update_docs(doc: Path, body: str) -> bool:
    """Replace the text between the results markers of *doc*; False if the markers are missing."""
    text = doc.read_text()
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        return False
    doc.write_text(pattern.sub(lambda _: f"{BEGIN}\n{body}{END}", text, count=1))
    return True
