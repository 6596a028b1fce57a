"""Benchmark harness comparing fastproxy with nginx on loopback (see benchmarks/README.md).

A package so the helpers are importable by the unit tests and by ``benchmarks/run.py``.
"""
