"""Start, watch and reliably stop the servers a benchmark run needs.

A benchmark that leaves nginx or a sidecar running poisons the next run, so every child gets
its own session (killable as a group), a parent-death signal, and is stopped on any exit path.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from benchmarks.procstat import CpuTicks, children, read_cpu_ticks

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal() -> None:
    """preexec_fn: have the kernel SIGTERM this child if the harness dies, even by SIGKILL.

    nginx masters then take their workers down with them; wrk just stops.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class ManagedProcess:
    """A child process started in its own session, with output sent to a log file."""

    def __init__(self, name: str, argv: Sequence[str], cwd: Path, log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # The harness is single-threaded, so preexec_fn's fork-safety caveat does not apply.
            preexec_fn=set_parent_death_signal,  # noqa: PLW1509
        )

    @property
    def pid(self) -> int:
        """Pid of the process we started (an nginx master, or the fastproxy process)."""
        return self.popen.pid

    def alive(self) -> bool:
        """False once the process has exited."""
        return self.popen.poll() is None

    def tree_pids(self) -> list[int]:
        """This process and all live descendants (nginx workers, any fastproxy workers)."""
        out: list[int] = []
        todo = [self.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children(pid))
        return out

    def cpu_ticks(self) -> CpuTicks:
        """Summed utime+stime of the whole process tree, in clock ticks."""
        total = CpuTicks(0, 0)
        for pid in self.tree_pids():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total = total + read_cpu_ticks(pid)
        return total

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after ``grace_s``."""
        pgid = self.popen.pid  # == pid because of start_new_session
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=grace_s)
        # Workers may outlive their master for a moment; the group id still reaches them.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=grace_s)
        self._log.close()

    def log_tail(self, n_lines: int = 30, extra: Sequence[Path] = ()) -> str:
        """Last lines of the process output (and of ``extra`` logs) for error messages."""
        parts: list[str] = []
        for path in (self.log_path, *extra):
            try:
                lines = path.read_text(errors="replace").splitlines()
            except FileNotFoundError:
                continue
            if lines:
                parts.append(f"--- {path.name} ---\n" + "\n".join(lines[-n_lines:]))
        return "\n".join(parts) if parts else "(no output)"


class ProcessRegistry:
    """Every child of this run; stop_all() is safe to call repeatedly and from atexit."""

    def __init__(self) -> None:
        self._procs: list[ManagedProcess] = []
        atexit.register(self.stop_all)

    def start(self, name: str, argv: Sequence[str], cwd: Path, log_path: Path) -> ManagedProcess:
        """Start and remember a process so it cannot be leaked."""
        proc = ManagedProcess(name, argv, cwd, log_path)
        self._procs.append(proc)
        return proc

    def stop_all(self) -> None:
        """Stop every process in reverse start order (proxies before their upstream)."""
        while self._procs:
            proc = self._procs.pop()
            try:
                proc.stop()
            except Exception as exc:  # never let one failure leak the others
                print(f"warning: stopping {proc.name} failed: {exc}", file=sys.stderr)


def install_exit_signal_handlers() -> None:
    """Turn SIGTERM/SIGHUP into SystemExit so finally-blocks and atexit clean up."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


_handed_out: set[int] = set()


def free_port() -> int:
    """A currently unused loopback TCP port, never the same one twice in this run."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("could not find a free TCP port")
