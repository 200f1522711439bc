"""The results as Markdown, the ratios and the targets of the benchmark issue."""

from __future__ import annotations

import re
from pathlib import Path

from .load import LOADGEN_BOUND_PCT, SCENARIOS

__all__ = ["targets", "observations", "markdown", "update_docs", "BEGIN", "END"]

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
TS, NODE, BARE = "tokensmith", "node-oidc", "bare-hypercorn"


def _scen(results: dict, server: str, size: int | str, key: str) -> dict | None:
    entry = results["servers"].get(server, {}).get(str(size))
    return entry["scenarios"].get(key) if entry else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _rps(summary: dict | None) -> float | None:
    return summary.get("rps") if summary else None


def _bare(results: dict, key: str) -> dict | None:
    """The bare app is measured once (it has no clients): at the first size."""
    return _scen(results, BARE, results["sizes"][0], key)


def targets(results: dict) -> list[dict[str, object]]:
    """Each target of the issue: what it asks, what this run measured, and whether it holds."""
    first, last = results["sizes"][0], results["sizes"][-1]
    rows: list[dict[str, object]] = []

    def add(name: str, wanted: str, value: float | None, ok: bool | None, unit: str = "") -> None:
        rows.append({"target": name, "wanted": wanted, "value": value, "unit": unit,
                     "met": None if value is None else ok})

    for key, floor in (("s1", 0.75), ("s2", 1.0)):
        r = _ratio(_rps(_scen(results, TS, first, key)), _rps(_scen(results, NODE, first, key)))
        add(f"scenario {key[1]} throughput vs node-oidc", f">= {floor}x", r,
            r is not None and r >= floor, "x")
    s1 = _scen(results, TS, first, "s1")
    p99 = s1.get("p99_ms") if s1 else None
    add("scenario 1 p99", "<= 20 ms", p99, p99 is not None and p99 <= 20, " ms")
    if last != first:
        for key in ("s1", "s2"):
            r = _ratio(_rps(_scen(results, TS, last, key)), _rps(_scen(results, TS, first, key)))
            add(f"scenario {key[1]} with {last:,} clients vs {first}", ">= 0.9x", r,
                r is not None and r >= 0.9, "x")
    big = results["servers"].get(TS, {}).get(str(last))
    if big:
        add(f"startup with {last:,} clients", "< 2 s", big.get("startup_s"),
            big.get("startup_s") is not None and big["startup_s"] < 2, " s")
        rss = max(filter(None, (big.get("rss_ready_mb"), big.get("rss_after_mb"))), default=None)
        add(f"RSS with {last:,} clients (max of at ready, after load)", "< 150 MB", rss,
            rss is not None and rss < 150, " MB")
    reg = [v["total_s"] for v in results.get("registration", {}).values() if v.get("ok")]
    failed = any(not v.get("ok") for v in results.get("registration", {}).values())
    worst = max(reg) if reg and not failed else None
    add("registration to first token (worst size)", "< 1 s", worst,
        worst is not None and worst < 1, " s")
    workers = results.get("workers", {})
    if workers:
        r = _ratio(_rps(workers.get("2", {}).get("scenarios", {}).get("s1")),
                   _rps(workers.get("1", {}).get("scenarios", {}).get("s1")))
        add("2 workers vs 1 (scenario 1, whole machine)", ">= 1.8x", r,
            r is not None and r >= 1.8, "x")
    return rows


def observations(results: dict) -> list[str]:
    """What the figures themselves say about where the time goes (derived, not measured)."""
    found = []
    for server, by_size in results["servers"].items():
        for size, entry in by_size.items():
            for key, summary in entry.get("scenarios", {}).items():
                cpu, lg = summary.get("server_cpu_pct"), summary.get("loadgen_cpu_pct_max")
                if (cpu is not None and cpu < 80 and lg is not None and lg < LOADGEN_BOUND_PCT
                        and summary.get("rps") and not summary.get("medians_include_disturbed")):
                    found.append(f"{server} scenario {key[1]} (N={int(size):,}): the server used"
                                 f" only {cpu:.0f}% of its CPU and loadgen {lg:.0f}% of its own,"
                                 f" at p50 {summary.get('p50_ms')} ms: its throughput is limited by"
                                 " waiting, not by computation.")
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
    return [_f(summary["rps"], 0), _f(summary.get("p50_ms"), 2), _f(summary.get("p99_ms"), 2),
            _f(errors, 0) if errors else "0", f"{cpu:.0f}%" if cpu is not None else "–"]


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
    out = [f"Run: **{meta['mode']}**, {meta['started']}, took {meta.get('duration_s', 0) / 60:.1f} min"
           f" ({results.get('status', '?')}; {meta.get('calm_waited_s', 0):.0f} s spent waiting for other"
           f" processes to quiet down). Each figure is the median of {st['rounds']} round(s)"
           f" of {st['duration']} s after {st['warmup']} s warmup, {st['connections']} connections."
           f" Servers pinned to CPU {st['server_cpus']}, loadgen to CPU {st['loadgen_cpus']}"
           " (`taskset`). rps = requests/s; latency in ms; err = failed requests (median per"
           " round); CPU = the server's CPU use in % of one core; ratio = tokensmith rps /"
           " reference rps; ⚠ = loadgen above 80% of its core (it may have been the limit).", ""]
    if not has_node:
        out += [f"**node-oidc was not measured**: {results.get('node_skipped', 'skipped')}.", ""]

    out += [f"### Scenarios ({first:,} registered mutual-TLS client{'s' if first != 1 else ''})", "",
            "| scenario | tokensmith rps | p50 | p99 | err | CPU | node-oidc rps | p50 | p99 | err |"
            " CPU | bare rps | p50 | p99 | err | CPU | ts/node | ts/bare | loadgen CPU |",
            "|---|" + "---:|" * 18]
    for key, scenario in SCENARIOS.items():
        ts, node, bare = _scen(results, TS, first, key), _scen(results, NODE, first, key), _bare(results, key)
        if not ts and not node and not bare:
            continue
        out.append(f"| {key[1]}. {scenario.title} | " + " | ".join(
            _cells(ts) + _cells(node) + _cells(bare)
            + [_f(_ratio(_rps(ts), _rps(node)), 2), _f(_ratio(_rps(ts), _rps(bare)), 2), _cpu(ts, node, bare)])
            + " |")

    if len(sizes) > 1:
        out += ["", "### Scale: registered mutual-TLS clients (scenarios 1 and 2)", "",
                "| clients | scenario | tokensmith rps | p99 | CPU | vs 1st size | node-oidc rps | p99 |"
                " CPU | ts/node | ts/bare | loadgen CPU |", "|---:|---|" + "---:|" * 10]
        for size in sizes:
            for key in ("s1", "s2"):
                ts, node = _scen(results, TS, size, key), _scen(results, NODE, size, key)
                out.append(f"| {size:,} | {key[1]} | {_cells(ts)[0]} | {_cells(ts)[2]} | {_cells(ts)[4]} | "
                           f"{_f(_ratio(_rps(ts), _rps(_scen(results, TS, first, key))), 2)} | "
                           f"{_cells(node)[0]} | {_cells(node)[2]} | {_cells(node)[4]} | "
                           f"{_f(_ratio(_rps(ts), _rps(node)), 2)} | "
                           f"{_f(_ratio(_rps(ts), _rps(_bare(results, key))), 2)} | {_cpu(ts, node)} |")

    out += ["", "### Startup and resident memory", "",
            "| server | clients | startup (s) | RSS at ready (MiB) | RSS after load (MiB) |"
            " certificate-bound token |", "|---|---:|---:|---:|---:|---|"]
    for server, by_size in results["servers"].items():
        for size, entry in by_size.items():
            bound = {True: "yes (cnf.x5t#S256 matches)", False: "**no**", None: "n/a"}[entry.get("bound")]
            out.append(f"| {server} | {int(size):,} | {_f(entry.get('startup_s'), 2)} | "
                       f"{_f(entry.get('rss_ready_mb'))} | {_f(entry.get('rss_after_mb'))} | {bound} |")

    if results.get("registration"):
        out += ["", "### `tokensmith sp add` to the new client's first token (running server, no restart)", "",
                "| registered clients | total (s) | `sp add` process (s) | then to first 200 (s) | attempts |",
                "|---:|---:|---:|---:|---:|"]
        for size, reg in results["registration"].items():
            total = _f(reg.get("total_s"), 3) if reg.get("ok") else f"**failed** ({reg.get('status')})"
            out.append(f"| {int(size):,} | {total} | {_f(reg.get('cli_s'), 3)} | "
                       f"{_f(reg.get('after_cli_s'), 3)} | {reg.get('attempts')} |")

    workers = results.get("workers", {})
    if workers:
        out += ["", f"### 1 worker vs 2 workers ({first:,} client{'s' if first != 1 else ''};"
                " whole machine: neither server nor loadgen pinned)", "",
                "| scenario | 1 worker rps | p99 | CPU | 2 workers rps | p99 | CPU | 2w/1w | loadgen CPU |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for key in ("s1", "s2"):
            one = workers.get("1", {}).get("scenarios", {}).get(key)
            two = workers.get("2", {}).get("scenarios", {}).get(key)
            if one or two:
                out.append(f"| {key[1]} | {_cells(one)[0]} | {_cells(one)[2]} | {_cells(one)[4]} | "
                           f"{_cells(two)[0]} | {_cells(two)[2]} | {_cells(two)[4]} | "
                           f"{_f(_ratio(_rps(two), _rps(one)), 2)} | {_cpu(one, two)} |")

    out += ["", "### Targets", "", "| target | wanted | measured | met |", "|---|---|---:|---|"]
    for t in results.get("targets", []):
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        value = _f(t["value"], 3 if t["unit"] in ("x", " s") else 1)
        out.append(f"| {t['target']} | {t['wanted']} | {value}{t['unit'] if t['value'] is not None else ''} | {met} |")

    m, v, g = meta["machine"], meta["versions"], meta["git"]
    out += ["", "### Machine and versions", "",
            f"- {m.get('nproc')} CPUs ({m.get('cpu_model')}), {m.get('memory_gib')} GiB, kernel"
            f" {m.get('kernel')}, {m.get('os')}; load average at start {m.get('loadavg_at_start')}",
            f"- Python {v.get('python')}, Hypercorn {v.get('hypercorn')}, Quart {v.get('quart')},"
            f" h11 {v.get('h11')}, httptools {v.get('httptools', '–')}, cryptography {v.get('cryptography')},"
            f" tokensmith {v.get('tokensmith')}",
            f"- Node {v.get('node', '–')}, oidc-provider {v.get('oidc_provider', '–')}",
            f"- OpenSSL: Python {v.get('python_openssl')}; Node {v.get('node_openssl', '–')};"
            f" loadgen (system) {v.get('system_openssl')}",
            f"- tokensmith commit {str(g.get('commit'))[:12]}, {g.get('uncommitted_files')} uncommitted"
            f" file(s) in the working tree ({len(g.get('uncommitted_outside_bench', []))} outside bench/)"]
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
