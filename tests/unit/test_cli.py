"""The `fastproxy` command line: flags and environment into `Config`, and dispatch."""

from __future__ import annotations

import argparse
import runpy
import stat
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from fastproxy.cli import _build_parser, build_config, main, normalize_argv
from fastproxy.config import Config, ConfigError

RUN_FLAGS = [
    "--app-id",
    "--app-port",
    "--app-channel-address",
    "--dapr-http-port",
    "--dapr-listen-addresses",
    "--dapr-internal-port",
    "--dapr-internal-grpc-port",
    "--dapr-internal-grpc-listen-address",
    "--resources-path",
    "--components-path",
    "--config",
    "--max-body-size",
    "--read-buffer-size",
    "--log-level",
    "--log-as-json",
    "--enable-metrics",
    "--metrics-port",
    "--metrics-listen-address",
    "--enable-api-logging",
    "--dapr-graceful-shutdown-seconds",
    "--keep-alive-timeout",
    "--header-timeout",
    "--enable-mtls",
    "--trust-anchors",
    "--cert-chain",
    "--cert-key",
]
RUN_A = ["run", "--app-id", "a"]
ENV_VARS = [
    "APP_ID",
    "APP_PORT",
    "DAPR_HTTP_PORT",
    "DAPR_API_TOKEN",
    "APP_API_TOKEN",
    "NAMESPACE",
    "DAPR_HOST_IP",
    "DAPR_TRUST_ANCHORS",
    "DAPR_CERT_CHAIN",
    "DAPR_CERT_KEY",
]
MTLS_FLAGS = ["--trust-anchors", "ca.pem", "--cert-chain", "a.pem", "--cert-key", "a.key"]
MTLS_ENV = {"DAPR_TRUST_ANCHORS": "ca.pem", "DAPR_CERT_CHAIN": "a.pem", "DAPR_CERT_KEY": "a.key"}
MTLS_CONFIG = Config(app_id="a", trust_anchors="ca.pem", cert_chain="a.pem", cert_key="a.key")
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
MTLS_ENABLED_CONFIG = Config(
    app_id="a", trust_anchors="ca.pem", cert_chain="a.pem", cert_key="a.key", enable_mtls=True
)


# --- building Config -------------------------------------------------------------


def test_run_with_only_app_id_uses_config_defaults() -> None:
    assert build_config(["run", "--app-id", "orders"], {}) == ("run", Config(app_id="orders"))


def test_every_flag_reaches_its_config_field() -> None:
    argv = [
        "run",
        "--app-id", "orders",
        "--app-port", "8080",
        "--app-channel-address", "10.0.0.7",
        "--dapr-http-port", "3600",
        "--dapr-listen-addresses", "0.0.0.0,[::]",
        "--resources-path", "./res",
        "--config", "./config.yaml",
        "--max-body-size", "8Mi",
        "--read-buffer-size", "16Ki",
        "--log-level", "debug",
        "--log-as-json",
        "--dapr-graceful-shutdown-seconds", "2.5",
        "--keep-alive-timeout", "15",
        "--header-timeout", "3",
    ]  # fmt: skip

    command, config = build_config(argv, {})

    assert command == "run"
    assert config == Config(
        app_id="orders",
        app_port=8080,
        app_channel_address="10.0.0.7",
        http_port=3600,
        listen_addresses=("0.0.0.0", "::"),
        resources_paths=("./res",),
        config_file="./config.yaml",
        max_body_size=8 * 1024**2,
        read_buffer_size=16 * 1024,
        log_level="debug",
        log_as_json=True,
        graceful_shutdown_seconds=2.5,
        keep_alive_timeout=15.0,
        header_timeout=3.0,
    )


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        pytest.param([], {}, Config(app_id="a"), id="metrics-on-by-default"),
        pytest.param(
            ["--enable-metrics=false"], {}, Config(app_id="a", enable_metrics=False), id="off"
        ),
        pytest.param(
            ["--enable-metrics", "false"], {}, Config(app_id="a", enable_metrics=False), id="off-2"
        ),
        pytest.param(["--enable-metrics"], {}, Config(app_id="a"), id="bare-flag-is-true"),
        pytest.param(["-enable-metrics=0"], {}, Config(app_id="a", enable_metrics=False), id="go"),
        pytest.param(
            ["--metrics-port", "0", "--metrics-listen-address", "127.0.0.1"],
            {},
            Config(app_id="a", metrics_port=0, metrics_listen_address="127.0.0.1"),
            id="port-and-address",
        ),
        pytest.param(
            [], {"DAPR_METRICS_PORT": "9191"}, Config(app_id="a", metrics_port=9191), id="env-port"
        ),
        pytest.param(
            ["--metrics-port", "9292"],
            {"DAPR_METRICS_PORT": "9191"},
            Config(app_id="a", metrics_port=9292),
            id="flag-port-wins",
        ),
        pytest.param(
            ["--enable-api-logging"], {}, Config(app_id="a", enable_api_logging=True), id="api-log"
        ),
        pytest.param(
            ["--enable-api-logging=true", "--log-as-json"],
            {},
            Config(app_id="a", enable_api_logging=True, log_as_json=True),
            id="api-log-json",
        ),
    ],
)
def test_observability_flags(argv: list[str], environ: dict[str, str], expected: Config) -> None:
    assert build_config([*RUN_A, *argv], environ) == ("run", expected)


@pytest.mark.parametrize(
    "argv",
    [["--enable-metrics=maybe"], ["--metrics-port", "70000"], ["--enable-api-logging=yes"]],
    ids=["bool", "port", "api-logging-bool"],
)
def test_bad_observability_flags_exit_with_status_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_config([*RUN_A, *argv], {})
    assert exited.value.code == 2
    assert argv[0].split("=")[0] in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        pytest.param([], {"APP_ID": "env-app"}, Config(app_id="env-app"), id="app-id-from-env"),
        pytest.param(
            ["--app-id", "flag"], {"APP_ID": "env"}, Config(app_id="flag"), id="app-id-flag-wins"
        ),
        pytest.param(
            ["--app-id", "a"],
            {"APP_PORT": "5000"},
            Config(app_id="a", app_port=5000),
            id="app-port-from-env",
        ),
        pytest.param(
            ["--app-id", "a", "--app-port", "6000"],
            {"APP_PORT": "5000"},
            Config(app_id="a", app_port=6000),
            id="app-port-flag-wins",
        ),
        pytest.param(
            ["--app-id", "a", "--app-port", "6000"],
            {"APP_PORT": "junk"},
            Config(app_id="a", app_port=6000),
            id="flag-hides-bad-env",
        ),
        pytest.param(
            ["--app-id", "a"],
            {"DAPR_HTTP_PORT": "3601"},
            Config(app_id="a", http_port=3601),
            id="http-port-from-env",
        ),
        pytest.param(
            ["--app-id", "a", "--dapr-http-port", "3602"],
            {"DAPR_HTTP_PORT": "3601"},
            Config(app_id="a", http_port=3602),
            id="http-port-flag-wins",
        ),
        pytest.param(
            ["--app-id", "a"],
            {"DAPR_API_TOKEN": "s3cret", "APP_API_TOKEN": "app-s3cret", "NAMESPACE": "prod"},
            Config(app_id="a", api_token="s3cret", app_api_token="app-s3cret", namespace="prod"),
            id="tokens-and-namespace",
        ),
        pytest.param(
            ["--app-id", "a"],
            {var: "" for var in ENV_VARS if var != "APP_ID"},
            Config(app_id="a"),
            id="empty-env-values-ignored",
        ),
        pytest.param(
            ["--app-id", "a"],
            {"PATH": "/bin", "DAPR_GRPC_PORT": "50001"},
            Config(app_id="a"),
            id="unrelated-env-ignored",
        ),
    ],
)
def test_environment_fills_absent_flags(
    argv: list[str], environ: dict[str, str], expected: Config
) -> None:
    assert build_config(["run", *argv], environ) == ("run", expected)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(
            ["run", "-app-id", "a", "-app-port", "3000"],
            Config(app_id="a", app_port=3000),
            id="single-dash-with-separate-values",
        ),
        pytest.param(
            ["run", "-app-id=a", "-dapr-http-port=3600", "-log-as-json"],
            Config(app_id="a", http_port=3600, log_as_json=True),
            id="single-dash-with-equals",
        ),
        pytest.param(
            ["run", "-app-id", "a", "--app-port", "1", "-components-path", "c"],
            Config(app_id="a", app_port=1, resources_paths=("c",)),
            id="mixed-dash-styles",
        ),
        pytest.param(
            ["run", "-app-id", "a", "-max-body-size", "1Mi"],
            Config(app_id="a", max_body_size=1024**2),
            id="single-dash-quantity",
        ),
    ],
)
def test_single_dash_long_flags_are_accepted(argv: list[str], expected: Config) -> None:
    assert build_config(argv, {}) == ("run", expected)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(["-app-id", "x"], ["--app-id", "x"], id="long-flag"),
        pytest.param(["-h"], ["-h"], id="short-help-untouched"),
        pytest.param(["-x"], ["-x"], id="single-letter-untouched"),
        pytest.param(["-1"], ["-1"], id="negative-number-untouched"),
        pytest.param(["-App"], ["-App"], id="uppercase-untouched"),
        pytest.param(["--app-id"], ["--app-id"], id="double-dash-untouched"),
        pytest.param(["a", "--", "-app-id"], ["a", "--", "-app-id"], id="after-double-dash"),
    ],
)
def test_normalize_argv(argv: list[str], expected: list[str]) -> None:
    assert normalize_argv(argv) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("[::1],0.0.0.0", ("::1", "0.0.0.0"), id="bracketed-ipv6"),
        pytest.param("127.0.0.1", ("127.0.0.1",), id="single"),
        pytest.param("::1", ("::1",), id="bare-ipv6"),
        pytest.param(" 127.0.0.1 , [::1] ", ("127.0.0.1", "::1"), id="spaces"),
        pytest.param("127.0.0.1,127.0.0.1", ("127.0.0.1",), id="duplicates-dropped"),
        pytest.param("localhost", ("localhost",), id="host-name"),
    ],
)
def test_listen_addresses(text: str, expected: tuple[str, ...]) -> None:
    _, config = build_config([*RUN_A, "--dapr-listen-addresses", text], {})

    assert config.listen_addresses == expected


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        pytest.param(MTLS_FLAGS, {}, MTLS_CONFIG, id="flags"),
        pytest.param([], MTLS_ENV, MTLS_CONFIG, id="env"),
        pytest.param(
            ["--enable-mtls", *MTLS_FLAGS],
            {},
            MTLS_ENABLED_CONFIG,
            id="enable-mtls-with-material",
        ),
        pytest.param(
            ["--cert-chain", "flag.pem"],
            MTLS_ENV,
            Config(app_id="a", trust_anchors="ca.pem", cert_chain="flag.pem", cert_key="a.key"),
            id="flag-wins-over-env",
        ),
        pytest.param(
            ["--trust-anchors", "ca.pem"],
            {"DAPR_CERT_CHAIN": "a.pem", "DAPR_CERT_KEY": "a.key"},
            MTLS_CONFIG,
            id="flag-and-env-mixed",
        ),
        pytest.param(
            [],
            {**MTLS_ENV, "DAPR_TRUST_ANCHORS": PEM},
            Config(app_id="a", trust_anchors=PEM, cert_chain="a.pem", cert_key="a.key"),
            id="inline-pem-from-env",
        ),
        pytest.param(
            [], {var: "" for var in MTLS_ENV}, Config(app_id="a"), id="empty-env-means-off"
        ),
    ],
)
def test_mtls_material_from_flags_and_env(
    argv: list[str], environ: dict[str, str], expected: Config
) -> None:
    assert build_config([*RUN_A, *argv], environ) == ("run", expected)


def test_mtls_flags_work_for_demo() -> None:
    _, config = build_config(["demo", *MTLS_FLAGS], {})

    assert (config.trust_anchors, config.cert_chain, config.cert_key) == (
        "ca.pem",
        "a.pem",
        "a.key",
    )


def test_components_path_appends_to_resources_paths() -> None:
    argv = [*RUN_A, "--resources-path", "r1", "--components-path", "c"]
    argv += ["--resources-path", "r2"]

    _, config = build_config(argv, {})

    assert config.resources_paths == ("r1", "c", "r2")


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        pytest.param(
            [],
            {},
            Config(
                app_id="demo",
                app_port=0,
                internal_port=0,
                metrics_port=0,
                metrics_listen_address="127.0.0.1",
            ),
            id="defaults",
        ),
        pytest.param(
            [],
            {"APP_ID": "mine"},
            Config(
                app_id="mine",
                app_port=0,
                internal_port=0,
                metrics_port=0,
                metrics_listen_address="127.0.0.1",
            ),
            id="env-app-id",
        ),
        pytest.param(
            ["--app-id", "d", "--app-port", "9000"],
            {},
            Config(
                app_id="d",
                app_port=9000,
                internal_port=0,
                metrics_port=0,
                metrics_listen_address="127.0.0.1",
            ),
            id="flags",
        ),
    ],
)
def test_demo_defaults(argv: list[str], environ: dict[str, str], expected: Config) -> None:
    assert build_config(["demo", *argv], environ) == ("demo", expected)


# --- bad input -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "environ", "fragments"),
    [
        pytest.param([], {}, ["required", "COMMAND"], id="no-command"),
        pytest.param(["serve"], {}, ["invalid choice", "serve"], id="unknown-command"),
        pytest.param([*RUN_A, "--bogus"], {}, ["unrecognized", "--bogus"], id="unknown-flag"),
        pytest.param(
            ["run", "--app-i", "a"], {}, ["unrecognized", "--app-i"], id="no-abbreviations"
        ),
        pytest.param(["run"], {}, ["--app-id is required", "APP_ID"], id="missing-app-id"),
        pytest.param(["run"], {"APP_ID": ""}, ["--app-id is required"], id="empty-env-app-id"),
        pytest.param(
            ["run", "--app-id", ""], {}, ["--app-id", "invalid app id"], id="empty-app-id"
        ),
        pytest.param(["run", "--app-id", "a.b"], {}, ["--app-id", "'a.b'"], id="app-id-with-dot"),
        pytest.param(["run"], {"APP_ID": "a b"}, ["APP_ID", "'a b'"], id="env-app-id-invalid"),
        pytest.param(
            [*RUN_A, "--app-port", "abc"], {}, ["--app-port", "'abc'"], id="port-not-number"
        ),
        pytest.param([*RUN_A, "--app-port", "-1"], {}, ["--app-port", "'-1'"], id="port-negative"),
        pytest.param(
            [*RUN_A, "--dapr-http-port", "65536"],
            {},
            ["--dapr-http-port", "0..65535"],
            id="port-too-big",
        ),
        pytest.param(
            ["run", "--app-id", "a"], {"APP_PORT": "x"}, ["APP_PORT", "'x'"], id="env-app-port-bad"
        ),
        pytest.param(
            ["run", "--app-id", "a"],
            {"DAPR_HTTP_PORT": "70000"},
            ["DAPR_HTTP_PORT", "0..65535"],
            id="env-http-port-bad",
        ),
        pytest.param(["demo"], {"APP_PORT": "1.5"}, ["APP_PORT", "'1.5'"], id="env-bad-in-demo"),
        pytest.param(
            [*RUN_A, "--max-body-size", "4MB"], {}, ["--max-body-size", "'4MB'"], id="bad-quantity"
        ),
        pytest.param(
            [*RUN_A, "--read-buffer-size=-4Ki"],
            {},
            ["--read-buffer-size", "negative"],
            id="negative-quantity",
        ),
        pytest.param(
            [*RUN_A, "--log-level", "verbose"], {}, ["--log-level", "verbose"], id="bad-log-level"
        ),
        pytest.param(
            [*RUN_A, "--dapr-graceful-shutdown-seconds", "-1"],
            {},
            ["--dapr-graceful-shutdown-seconds", "negative"],
            id="negative-grace",
        ),
        pytest.param(
            [*RUN_A, "--header-timeout", "0"],
            {},
            ["--header-timeout", "greater than 0"],
            id="zero-timeout",
        ),
        pytest.param(
            [*RUN_A, "--keep-alive-timeout", "nan"],
            {},
            ["--keep-alive-timeout", "finite"],
            id="nan-timeout",
        ),
        pytest.param(
            [*RUN_A, "--keep-alive-timeout", "soon"],
            {},
            ["--keep-alive-timeout", "'soon'"],
            id="word-timeout",
        ),
        pytest.param(
            [*RUN_A, "--dapr-listen-addresses", "[127.0.0.1]"],
            {},
            ["--dapr-listen-addresses", "IPv6"],
            id="bracketed-ipv4",
        ),
        pytest.param(
            [*RUN_A, "--dapr-listen-addresses", "a,,b"],
            {},
            ["--dapr-listen-addresses", "''"],
            id="empty-address",
        ),
        pytest.param(
            [*RUN_A, "--dapr-listen-addresses", "[::1"],
            {},
            ["--dapr-listen-addresses", "'[::1'"],
            id="unclosed-bracket",
        ),
        pytest.param(
            [*RUN_A, "--cert-key", "a.key"],
            {},
            ["together", "missing: --trust-anchors (or DAPR_TRUST_ANCHORS), --cert-chain"],
            id="mtls-key-only",
        ),
        pytest.param(
            RUN_A,
            {"DAPR_TRUST_ANCHORS": "ca.pem", "DAPR_CERT_CHAIN": "a.pem"},
            ["together", "missing: --cert-key (or DAPR_CERT_KEY)"],
            id="mtls-env-without-key",
        ),
        pytest.param(
            [*RUN_A, "--enable-mtls"],
            {},
            ["--enable-mtls", "--trust-anchors", "--cert-chain", "--cert-key", "fastproxy certs"],
            id="enable-mtls-without-material",
        ),
        pytest.param(
            [*RUN_A, "--enable-mtls", "--trust-anchors", "ca.pem"],
            {},
            ["together", "missing: --cert-chain (or DAPR_CERT_CHAIN), --cert-key"],
            id="enable-mtls-partial",
        ),
        pytest.param(
            ["demo", "--enable-mtls"], {}, ["--enable-mtls", "missing"], id="demo-enable-mtls"
        ),
        pytest.param(
            [*RUN_A, *MTLS_FLAGS, "--cert-key", " "],
            {},
            ["--cert-key", "not empty"],
            id="blank-key-flag",
        ),
        pytest.param(
            [*RUN_A, "--trust-anchors"], {}, ["--trust-anchors", "expected one"], id="no-value"
        ),
    ],
)
def test_bad_input_exits_2_naming_the_source(
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    environ: dict[str, str],
    fragments: list[str],
) -> None:
    with pytest.raises(SystemExit) as caught:
        build_config(argv, environ)

    assert caught.value.code == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err


# --- help --------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["demo", "-h"]])
def test_help_lists_every_flag(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(argv) == 0

    out = capsys.readouterr().out
    for flag in RUN_FLAGS:
        assert flag in out


@pytest.mark.parametrize("command", ["run", "demo"])
def test_every_flag_has_help_text(command: str) -> None:
    _, commands = _build_parser()
    actions = commands[command]._actions

    assert sorted(o for a in actions for o in a.option_strings if o.startswith("--")) == sorted(
        [*RUN_FLAGS, "--help"]
    )
    for action in actions:
        assert action.help, action.option_strings
        assert action.help != argparse.SUPPRESS


# --- certs ------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("clean_environ")
def test_certs_writes_bundle_and_prints_env_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sidecar is not needed to write certificates: importing it would fail here.
    monkeypatch.setitem(sys.modules, "fastproxy.server", None)
    out = tmp_path / "certs"

    status = main(["certs", "--out", str(out), "--app-id", "a,b", "--app-id", "c", "-app-id=a"])

    assert status == 0
    names = ["ca.pem", "ca.key", "a.pem", "a.key", "b.pem", "b.key", "c.pem", "c.key"]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    assert {p.name for p in out.iterdir() if _mode(p) == 0o600} == {
        "ca.key",
        "a.key",
        "b.key",
        "c.key",
    }
    printed = capsys.readouterr().out
    assert "created a development CA" in printed
    assert "spiffe://public/ns/default/b" in printed
    for app in ("a", "b", "c"):
        line = (
            f"DAPR_TRUST_ANCHORS={out}/ca.pem DAPR_CERT_CHAIN={out}/{app}.pem "
            f"DAPR_CERT_KEY={out}/{app}.key fastproxy run --enable-mtls --app-id {app} "
        )
        assert line in printed
    assert printed.count("fastproxy run") == 3
    assert "NAMESPACE=" not in printed


@pytest.mark.usefixtures("clean_environ")
def test_certs_reuses_ca_and_names_namespace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["certs", "--out", str(tmp_path), "--app-id", "a"]) == 0
    ca_pem = (tmp_path / "ca.pem").read_bytes()
    capsys.readouterr()

    argv = ["certs", "--out", str(tmp_path), "--app-id", "b", "--namespace", "prod"]
    argv += ["--trust-domain", "example.org", "--days", "7"]
    assert main(argv) == 0

    printed = capsys.readouterr().out
    assert (tmp_path / "ca.pem").read_bytes() == ca_pem
    assert f"reused the CA in {tmp_path}/ca.pem" in printed
    assert "spiffe://example.org/ns/prod/b" in printed
    assert f"NAMESPACE=prod DAPR_TRUST_ANCHORS={tmp_path}/ca.pem" in printed


@pytest.mark.usefixtures("clean_environ")
def test_certs_reports_bad_input_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["certs", "--out", str(tmp_path), "--app-id", "ca"]) == 1

    assert capsys.readouterr().err == "fastproxy: app id 'ca' would overwrite the CA files\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        pytest.param(["certs", "--app-id", "a"], ["--out", "required"], id="no-out"),
        pytest.param(["certs", "--out", "d"], ["--app-id", "required"], id="no-app-id"),
        pytest.param(["certs", "--out", "d", "--app-id", "a,"], ["invalid app id"], id="comma"),
        pytest.param(
            ["certs", "--out", "d", "--app-id", "a.b"], ["invalid app id"], id="dotted-app-id"
        ),
        pytest.param(
            ["certs", "--out", "d", "--app-id", "a", "--days", "0"], ["--days"], id="zero-days"
        ),
        pytest.param(
            ["certs", "--out", "d", "--app-id", "a", "--enable-mtls"],
            ["unrecognized"],
            id="run-flag",
        ),
    ],
)
def test_certs_bad_flags_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], fragments: list[str]
) -> None:
    assert main(argv) == 2

    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err


def test_certs_builds_no_sidecar_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        build_config(["certs", "--out", "d", "--app-id", "a"], {})

    assert caught.value.code == 2
    assert "builds no sidecar Config" in capsys.readouterr().err


def test_certs_help_lists_its_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "--help"]) == 0

    out = capsys.readouterr().out
    for flag in ("--out", "--app-id", "--namespace", "--trust-domain", "--days"):
        assert flag in out


# --- main: dispatch ------------------------------------------------------------------


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


def _fake_runner(
    monkeypatch: pytest.MonkeyPatch, module: str, attribute: str, result: Any
) -> list[Config]:
    """Stand in for fastproxy.server / fastproxy.demo, recording the Config passed."""
    seen: list[Config] = []

    def runner(config: Config) -> int:
        seen.append(config)
        if isinstance(result, Exception):
            raise result
        return int(result)

    fake = types.ModuleType(module)
    setattr(fake, attribute, runner)
    monkeypatch.setitem(sys.modules, module, fake)
    return seen


@pytest.mark.usefixtures("clean_environ")
@pytest.mark.parametrize(
    ("argv", "module", "attribute", "expected"),
    [
        pytest.param(
            ["run", "-app-id", "a"], "fastproxy.server", "run", Config(app_id="a"), id="run"
        ),
        pytest.param(
            ["demo"],
            "fastproxy.demo",
            "run_demo",
            Config(
                app_id="demo",
                app_port=0,
                internal_port=0,
                metrics_port=0,
                metrics_listen_address="127.0.0.1",
            ),
            id="demo",
        ),
        pytest.param(
            [*RUN_A, "--enable-mtls", *MTLS_FLAGS],
            "fastproxy.server",
            "run",
            MTLS_ENABLED_CONFIG,
            id="run-mtls",
        ),
    ],
)
def test_main_hands_config_to_runner_and_returns_its_status(
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    module: str,
    attribute: str,
    expected: Config,
) -> None:
    seen = _fake_runner(monkeypatch, module, attribute, 7)

    assert main(argv) == 7
    assert seen == [expected]


@pytest.mark.usefixtures("clean_environ")
def test_main_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ID", "from-env")
    seen = _fake_runner(monkeypatch, "fastproxy.server", "run", 0)

    assert main(["run"]) == 0
    assert seen == [Config(app_id="from-env")]


@pytest.mark.usefixtures("clean_environ")
def test_main_reports_config_error_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_runner(monkeypatch, "fastproxy.server", "run", ConfigError("res/x.yaml: broken"))

    assert main(["run", "--app-id", "a"]) == 1
    assert capsys.readouterr().err == "fastproxy: res/x.yaml: broken\n"


@pytest.mark.usefixtures("clean_environ")
def test_main_returns_2_on_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*RUN_A, "--app-port", "x"]) == 2
    assert "--app-port" in capsys.readouterr().err


def test_python_dash_m_runs_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["fastproxy", "run", "--help"])
    monkeypatch.delitem(sys.modules, "fastproxy.__main__", raising=False)

    with pytest.raises(SystemExit) as caught:
        runpy.run_module("fastproxy", run_name="__main__")

    assert caught.value.code == 0
    assert "--dapr-graceful-shutdown-seconds" in capsys.readouterr().out
