"""Unit tests for the pure helpers of benchmarks.run and benchmarks.nginx_conf.

Case/target selection and the generated nginx configs decide *what* is compared; pin them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import nginx_conf
from benchmarks.cases import (
    ALL_CASES,
    QUICK_CASES,
    estimate_seconds,
    select_cases,
    select_targets,
    split_case,
)
from benchmarks.run import parse_args


@pytest.mark.parametrize(
    ("spec", "quick", "want"),
    [
        (None, False, list(ALL_CASES)),
        (None, True, list(QUICK_CASES)),
        ("small-c50", False, ["small-c50"]),
        ("64k-*,small-c1", False, ["small-c1", "64k-c50", "64k-c1"]),
        ("*-c1", True, ["small-c1", "4k-c1", "64k-c1"]),
        (" small-c50 , small-c50 ", False, ["small-c50"]),
    ],
    ids=["default", "quick", "single", "glob-and-name", "glob-overrides-quick", "dedup-spaces"],
)
def test_select_cases(spec: str | None, quick: bool, want: list[str]) -> None:
    assert select_cases(spec, quick) == want


def test_select_cases_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="1m-c50"):
        select_cases("small-c50,1m-c50", quick=False)


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("direct,nginx-proxy,fastproxy", ["direct", "nginx-proxy", "fastproxy"]),
        ("fastproxy,nginx", ["nginx-proxy", "fastproxy"]),
        ("Direct", ["direct"]),
        ("fp", ["fastproxy"]),
    ],
    ids=["all", "alias-and-reorder", "case-insensitive", "short-alias"],
)
def test_select_targets(spec: str, want: list[str]) -> None:
    assert select_targets(spec) == want


@pytest.mark.parametrize("spec", ["envoy", "", ","], ids=["unknown", "empty", "only-comma"])
def test_select_targets_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        select_targets(spec)


@pytest.mark.parametrize(
    ("case", "want"),
    [("small-c50", ("small", 50)), ("64k-c1", ("64k", 1))],
    ids=["small", "64k"],
)
def test_split_case(case: str, want: tuple[str, int]) -> None:
    assert split_case(case) == want


@pytest.mark.parametrize(
    ("argv", "duration", "cases"),
    [
        ([], 10.0, list(ALL_CASES)),
        (["--quick"], 3.0, list(QUICK_CASES)),
        (["--quick", "--duration", "5"], 5.0, list(QUICK_CASES)),
        (["--cases", "4k-*"], 10.0, ["4k-c50", "4k-c1"]),
    ],
    ids=["default", "quick", "quick-explicit-duration", "cases-filter"],
)
def test_parse_args(argv: list[str], duration: float, cases: list[str]) -> None:
    args = parse_args(argv)
    assert args.duration == duration
    assert args.case_list == cases


def test_default_run_fits_in_five_minutes() -> None:
    runs = len(ALL_CASES) * 3
    assert estimate_seconds(runs, 10.0, 1.0) < 5 * 60


@pytest.mark.parametrize(
    ("size", "length"),
    [("small", 13), ("4k", 4096), ("64k", 65536)],
    ids=["small", "4k", "64k"],
)
def test_bodies(size: str, length: int) -> None:
    assert len(nginx_conf.body_for(size)) == length == nginx_conf.SIZES[size]


def test_write_bodies(tmp_path: Path) -> None:
    nginx_conf.write_bodies(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["4k", "64k"]
    assert (tmp_path / "64k").read_bytes() == nginx_conf.body_for("64k")


@pytest.mark.parametrize("as_root", [True, False], ids=["root", "non-root"])
def test_upstream_conf(tmp_path: Path, as_root: bool) -> None:
    conf = nginx_conf.upstream_conf(tmp_path, 8123, tmp_path / "bodies", as_root)
    assert ("user root;" in conf) is as_root
    for needle in (
        "worker_processes 1;",
        "daemon off;",
        "access_log off;",
        "listen 127.0.0.1:8123",
        'return 200 "hello, world\\n";',
        f"alias {tmp_path / 'bodies' / '64k'};",
        f"pid {tmp_path / 'upstream.pid'};",
        f"keepalive_requests {nginx_conf.KEEPALIVE_REQUESTS};",
    ):
        assert needle in conf
    assert conf.count("{") == conf.count("}")


def test_proxy_conf(tmp_path: Path) -> None:
    conf = nginx_conf.proxy_conf(tmp_path, 9000, 8123, as_root=True)
    for needle in (
        "worker_processes 1;",
        "access_log off;",
        "listen 127.0.0.1:9000",
        "server 127.0.0.1:8123;",
        "keepalive 64;",
        r"location ~ ^/v1\.0/invoke/[^/]+/method/(.*)$ {",
        "proxy_pass http://up/$1$is_args$args;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        f"error_log {tmp_path / 'nginx-proxy-error.log'} warn;",
    ):
        assert needle in conf
    assert conf.count("{") == conf.count("}")
