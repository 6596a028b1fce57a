"""Talking to a started target: one-shot HTTP requests, readiness polls, and the error that
stops a target from being measured (its message says why and shows the logs).
"""

from __future__ import annotations

import http.client
import socket
import time

from benchmarks.procs import ManagedProcess

READY_TIMEOUT_S = 10.0


class BenchError(RuntimeError):
    """A target could not be started or measured; the message says why and shows logs."""


def http_request(port: int, path: str, timeout: float = 2.0) -> tuple[int, dict[str, str], bytes]:
    """One GET on a fresh connection: status, headers (names lower-cased) and body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        headers = {name.lower(): value for name, value in resp.getheaders()}
        return resp.status, headers, resp.read()
    finally:
        conn.close()


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """One GET on a fresh connection; used for readiness and response sanity checks."""
    status, _, body = http_request(port, path, timeout)
    return status, body


def port_open(port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_ready(
    proc: ManagedProcess, port: int, path: str, want_status: int, timeout_s: float
) -> None:
    """Poll until GET ``path`` answers ``want_status``; fail early if the process dies."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited with code {proc.popen.returncode}")
        try:
            status, _ = http_get(port, path, timeout=1.0)
            if status == want_status:
                return
            last = f"HTTP {status}"
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.05)
    raise BenchError(f"{proc.name} not ready after {timeout_s:g} s on GET {path} ({last})")
