"""The machine a run measures on: the tools it needs (found, or installed with apt-get) and
the facts written next to every figure (commit, CPU, kernel, versions).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.probe import BenchError
from benchmarks.procstat import clock_ticks_per_second
from fastproxy import build

ROOT = Path(__file__).resolve().parent.parent


def find_tool(name: str) -> str | None:
    """Locate a binary, also looking in sbin dirs that a non-login PATH may lack."""
    path = os.pathsep.join(
        [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin"]
    )
    return shutil.which(name, path=path)


def ensure_tools() -> tuple[str, str]:
    """Return (wrk, nginx) paths, installing the Debian packages when one is missing."""
    wrk, nginx = find_tool("wrk"), find_tool("nginx")
    if wrk and nginx:
        return wrk, nginx
    missing = [n for n, p in (("wrk", wrk), ("nginx", nginx)) if p is None]
    if os.geteuid() != 0:
        raise BenchError(
            f"{' and '.join(missing)} not installed and not root: apt-get install them"
        )
    print(f"installing {', '.join(missing)} with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    base = ["apt-get", "install", "-y", "-qq"]
    if wrk is None:
        subprocess.run([*base, "wrk"], check=True, env=env)
    if (
        nginx is None
        and subprocess.run([*base, "nginx-light"], check=False, env=env).returncode != 0
    ):
        # Debian 13 dropped nginx-light; plain nginx is the same binary for our purposes.
        subprocess.run([*base, "nginx"], check=True, env=env)
    wrk, nginx = find_tool("wrk"), find_tool("nginx")
    if not (wrk and nginx):
        raise BenchError("wrk/nginx still missing after apt-get install")
    return wrk, nginx


def _cmd_output(argv: Sequence[str]) -> str:
    """Combined stdout+stderr of a short command ('nginx -v' prints to stderr)."""
    try:
        res = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return (res.stdout + res.stderr).strip()


def git_info() -> dict[str, Any]:
    """Commit and dirtiness, via read-only git commands that take no index lock."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*a: str) -> str | None:
        try:
            res = subprocess.run(
                ["git", "-C", str(ROOT), *a],
                check=False,
                capture_output=True,
                text=True,
                env=env,
                timeout=10,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "--verify", "-q", "HEAD")
    status = git("status", "--porcelain") or ""
    lines = status.splitlines()
    return {
        "commit": commit,
        "short": commit[:10] if commit else "nocommit",
        # "dirty" means tracked files differ from the commit; untracked files are listed apart.
        "dirty": any(not ln.startswith("??") for ln in lines),
        "untracked": any(ln.startswith("??") for ln in lines),
    }


def machine_info(wrk: str, nginx: str) -> dict[str, Any]:
    """Facts that make figures from different runs (in)comparable."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def version(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "uvloop": version("uvloop"),
        "httptools": version("httptools"),
        "fastproxy": version("fastproxy"),
        "fastproxy_build": build.describe(),
        "nginx": _cmd_output([nginx, "-v"]),
        "wrk": _cmd_output([wrk, "-v"]).splitlines()[0],
        "clk_tck": clock_ticks_per_second(),
        "loadavg_at_start": os.getloadavg(),
    }
