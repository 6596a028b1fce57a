"""Build hook: compile the request hot path to C with mypyc.

The modules below run for every request. They stay plain, type-checked
Python in the source tree; mypyc turns each into a C extension that the
interpreter prefers over the `.py` beside it, which takes about a third off
their cost (see `benchmarks/cycle.py`). Everything else, and any build with
FASTPROXY_PURE_PYTHON=1, runs as ordinary Python. Nothing changes in behaviour:
the whole test suite runs against the compiled build.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

HOT_PATH = [
    "fastproxy/downstream/flow.py",
    "fastproxy/downstream/headers.py",
    "fastproxy/downstream/protocol.py",
    "fastproxy/downstream/reply.py",
    "fastproxy/exchange.py",
    "fastproxy/forwarder.py",
    "fastproxy/methodpath.py",
    "fastproxy/observability/dapr_metrics.py",
    "fastproxy/observability/export.py",
    "fastproxy/observability/metrics.py",
    "fastproxy/observability/observation.py",
    "fastproxy/observability/observer.py",
    "fastproxy/observability/spans.py",
    "fastproxy/observability/tracecontext.py",
    "fastproxy/remote_exchange.py",
    "fastproxy/routing.py",
    "fastproxy/upstream/balancer.py",
    "fastproxy/upstream/connection.py",
    "fastproxy/upstream/pool.py",
    "fastproxy/upstream/remote.py",
    "fastproxy/wire.py",
]


def compiled_extensions() -> list[object]:
    if os.environ.get("FASTPROXY_PURE_PYTHON"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("fastproxy: mypyc not available; installing pure Python", file=sys.stderr)
        return []
    return list(mypycify(HOT_PATH, opt_level="3"))


setup(ext_modules=compiled_extensions())
