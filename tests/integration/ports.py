"""Free ports for servers a test starts in another process.

A port found by binding port 0 comes from the kernel's ephemeral range, so
between our check and the child's bind any outgoing connection on the host
may be given it. Ports below that range are never handed out implicitly: a
random free one there can only be taken by another explicit bind.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

HOST = "127.0.0.1"
_LOWEST = 10_000
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_start() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def _bindable(port: int, udp: bool) -> bool:
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,)
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                return False
    return True


def free_port(udp: bool = False) -> int:
    """A port free on loopback now (TCP, and UDP too when asked), below the ephemeral range."""
    highest = _ephemeral_start() - 1
    for _ in range(200):
        port = random.randint(_LOWEST, highest)
        if _bindable(port, udp):
            return port
    raise RuntimeError(f"no free port between {_LOWEST} and {highest}")
