"""The machine and the software versions a run was measured with."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from .servers import PEERS, ROOT, VENV_BIN

__all__ = ["machine", "versions", "git_state", "code_fingerprint"]


def _run(argv: list[str], cwd: Path | None = None) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def machine() -> dict[str, object]:
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
    except (OSError, IndexError, ValueError):
        pass
    governor = None
    try:
        governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpus_allowed": sorted(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "cpufreq_governor": governor,
        "loadavg_at_start": os.getloadavg(),
    }


def _os_name() -> str | None:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return None


def versions() -> dict[str, object]:
    probe = (
        "import importlib.metadata as m, json, ssl, sys\n"
        "v = {p: m.version(p) for p in ('tokensmith', 'hypercorn', 'quart', 'h11', 'h2',"
        " 'httptools', 'cryptography', 'pluggy')}\n"
        "v['python'] = sys.version.split()[0]; v['python_openssl'] = ssl.OPENSSL_VERSION\n"
        "print(json.dumps(v))"
    )
    found: dict[str, object] = json.loads(_run([str(VENV_BIN / "python"), "-c", probe]) or "{}")
    found["harness_python"] = sys.version.split()[0]
    found["system_openssl"] = _run(["openssl", "version"])  # loadgen links the system libssl
    if shutil.which("node"):
        found["node"] = _run(["node", "--version"])
        found["node_openssl"] = _run(["node", "-p", "process.versions.openssl"])
    package = PEERS / "node-oidc" / "node_modules" / "oidc-provider" / "package.json"
    if package.exists():
        found["oidc_provider"] = json.loads(package.read_text())["version"]
    found["cc"] = _run(["cc", "--version"]).splitlines()[0] if _run(["cc", "--version"]) else None
    return found


def git_state() -> dict[str, object]:
    """The commit, and how many files differ from it (other engineers edit concurrently)."""
    status = _run(["git", "status", "--porcelain"], cwd=ROOT) or ""
    changed = [line[3:] for line in status.splitlines()]
    return {
        "commit": _run(["git", "rev-parse", "HEAD"], cwd=ROOT),
        "uncommitted_files": len(changed),
        "uncommitted_outside_bench": sorted(p for p in changed if not p.startswith("bench/")),
    }


def code_fingerprint(dropins: Path) -> str:
    """A short hash of tokensmith's sources (an editable install: what a server imports when it
    starts) and of the plugin wheels deployed. Other engineers edit the tree while a run goes on;
    servers started with different fingerprints did not run the same code."""
    digest = hashlib.sha256()
    files = sorted((ROOT / "core" / "tokensmith").rglob("*.py")) + sorted(dropins.glob("*.whl"))
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()[:12]
