"""The `fastproxy` command: daprd's flags and environment turned into a `Config`.

`build_config` is pure (argv and environ in, `Config` out) so every flag can be
tested without a process, and the CLI and the library can never drift apart.
`fastproxy certs` writes development mTLS certificates and runs no sidecar.
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import math
import os
import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastproxy.config import Config, ConfigError, parse_quantity
from fastproxy.config.model import KIB, MIB

_DEFAULTS = Config()
# daprd accepts Go-style `-app-id`; a lone letter (`-h`) is left alone.
_SINGLE_DASH_LONG = re.compile(r"-[a-z][a-z0-9-]+")
_DIGITS = re.compile(r"\d+")
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_APP_ID_FORBIDDEN = re.compile(r"[\s/.]")
_LOG_LEVELS = ("debug", "info", "warn", "error")
_MAX_PORT = 65535
# Imported only when chosen, so `--help` and flag errors stay fast and independent.
_RUNNERS = {"run": ("fastproxy.server", "run"), "demo": ("fastproxy.demo", "run_demo")}
_CERTS_MODULE = "fastproxy.security.certs"
# (Config field, flag, environment variable) of the mTLS material: all three or none.
_MTLS_MATERIAL = (
    ("trust_anchors", "--trust-anchors", "DAPR_TRUST_ANCHORS"),
    ("cert_chain", "--cert-chain", "DAPR_CERT_CHAIN"),
    ("cert_key", "--cert-key", "DAPR_CERT_KEY"),
)


# --- value parsers (shared by flags and environment variables) ---------------


def _port(text: str) -> int:
    if not _DIGITS.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: not a whole number")
    value = int(text)
    if value > _MAX_PORT:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: must be 0..{_MAX_PORT}")
    return value


def _bool(text: str) -> bool:
    """Go's flag booleans: `--flag`, `--flag=true`, `--flag=false` (and 1/0, t/f)."""
    lowered = text.strip().lower()
    if lowered in {"1", "t", "true"}:
        return True
    if lowered in {"0", "f", "false"}:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r}: use true or false")


def _app_id(text: str) -> str:
    if not text or _APP_ID_FORBIDDEN.search(text):
        raise argparse.ArgumentTypeError(
            f"invalid app id {text!r}: must be non-empty, without dots, '/' or whitespace"
        )
    return text


def _app_ids(text: str) -> list[str]:
    """`a,b` or `a`: `--app-id` of `certs` may be repeated, comma-separated, or both."""
    return [_app_id(item.strip()) for item in text.split(",")]


def _pem_or_path(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must be PEM text or a file path, not empty")
    return text


def _days(text: str) -> int:
    if not _DIGITS.fullmatch(text.strip()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid days {text!r}: must be a whole number >= 1")
    return int(text)


def _quantity(text: str) -> int:
    try:
        return parse_quantity(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    """Zero allowed: no grace period on shutdown."""
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid seconds {text!r}: must not be negative")
    return value


def _positive_seconds(text: str) -> float:
    """A zero timeout would drop every connection, so it is refused."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid seconds {text!r}: must be greater than 0")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seconds {text!r}: not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"invalid seconds {text!r}: not a finite number")
    return value


def _addresses(text: str) -> tuple[str, ...]:
    """Split the CSV, unwrapping `[::1]`-style IPv6 literals, keeping first-seen order."""
    found: dict[str, None] = {}
    for item in text.split(","):
        found.setdefault(_address(item.strip()), None)
    return tuple(found)


def _address(item: str) -> str:
    bracketed = item.startswith("[") and item.endswith("]")
    host = item[1:-1] if bracketed else item
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if not bracketed and _HOSTNAME.fullmatch(host):
            return host
        raise argparse.ArgumentTypeError(f"invalid listen address {item!r}") from None
    if bracketed and ip.version != 6:
        raise argparse.ArgumentTypeError(f"invalid listen address {item!r}: brackets need IPv6")
    return host


# --- the parser ---------------------------------------------------------------


def _size_text(size: int) -> str:
    return f"{size // MIB}Mi" if size % MIB == 0 else f"{size // KIB}Ki"


def _addresses_text(addresses: Sequence[str]) -> str:
    return ",".join(f"[{a}]" if ":" in a else a for a in addresses)


def _add_flags(parser: argparse.ArgumentParser) -> None:
    """Every flag of `run` and `demo`; `dest` is the `Config` field it fills."""
    add = parser.add_argument
    add(
        "--app-id",
        dest="app_id",
        type=_app_id,
        metavar="ID",
        help="this app's id, used by callers in /v1.0/invoke/<id>/... "
        "(env APP_ID; required for run, 'demo' for demo)",
    )
    add(
        "--app-port",
        dest="app_port",
        type=_port,
        metavar="PORT",
        help="port the app listens on; omit for an outbound-only sidecar "
        "(env APP_PORT; demo: 0 picks a free port)",
    )
    add(
        "--app-channel-address",
        dest="app_channel_address",
        metavar="HOST",
        help=f"host to reach the app on (default: {_DEFAULTS.app_channel_address})",
    )
    add(
        "--dapr-http-port",
        dest="http_port",
        type=_port,
        metavar="PORT",
        help=f"port of the Dapr HTTP API (env DAPR_HTTP_PORT; default: {_DEFAULTS.http_port})",
    )
    add(
        "--dapr-listen-addresses",
        dest="listen_addresses",
        type=_addresses,
        metavar="CSV",
        help="comma-separated addresses the HTTP API listens on; IPv6 may be bracketed "
        f"(default: {_addresses_text(_DEFAULTS.listen_addresses)})",
    )
    add(
        "--dapr-internal-port",
        "--dapr-internal-grpc-port",
        dest="internal_port",
        type=_port,
        metavar="PORT",
        help="port where other sidecars deliver calls for this app; 0 picks a free one "
        f"(default: {_DEFAULTS.internal_port})",
    )
    add(
        "--dapr-internal-grpc-listen-address",
        dest="internal_listen_addresses",
        type=_addresses,
        metavar="CSV",
        help="addresses the internal port listens on (default: the --dapr-listen-addresses)",
    )
    add(
        "--resources-path",
        dest="resources_paths",
        action="append",
        metavar="PATH",
        help="folder or file of resource YAML (HTTPEndpoint, Configuration); repeatable",
    )
    add(
        "--components-path",
        dest="resources_paths",
        action="append",
        metavar="PATH",
        help="deprecated spelling of --resources-path",
    )
    add(
        "--config",
        dest="config_file",
        metavar="FILE",
        help="YAML file holding a Configuration resource; wins over one in --resources-path",
    )
    add(
        "--max-body-size",
        dest="max_body_size",
        type=_quantity,
        metavar="SIZE",
        help="largest request or response body, e.g. 4Mi, 500k "
        f"(default: {_size_text(_DEFAULTS.max_body_size)})",
    )
    add(
        "--read-buffer-size",
        dest="read_buffer_size",
        type=_quantity,
        metavar="SIZE",
        help="largest request head (request line plus headers) "
        f"(default: {_size_text(_DEFAULTS.read_buffer_size)})",
    )
    add(
        "--log-level",
        dest="log_level",
        choices=_LOG_LEVELS,
        help=f"least severe level logged (default: {_DEFAULTS.log_level})",
    )
    add(
        "--log-as-json",
        dest="log_as_json",
        action="store_true",
        default=None,
        help="write each log line as a JSON object",
    )
    add(
        "--enable-metrics",
        dest="enable_metrics",
        type=_bool,
        nargs="?",
        const=True,
        metavar="BOOL",
        help="serve Prometheus metrics on --metrics-port; --enable-metrics=false turns "
        f"them off (default: {str(_DEFAULTS.enable_metrics).lower()})",
    )
    add(
        "--metrics-port",
        dest="metrics_port",
        type=_port,
        metavar="PORT",
        help=f"port of the metrics listener, 0 for any free one "
        f"(env DAPR_METRICS_PORT; default: {_DEFAULTS.metrics_port})",
    )
    add(
        "--metrics-listen-address",
        dest="metrics_listen_address",
        metavar="ADDRESS",
        help=f"address of the metrics listener (default: {_DEFAULTS.metrics_listen_address})",
    )
    add(
        "--enable-api-logging",
        dest="enable_api_logging",
        type=_bool,
        nargs="?",
        const=True,
        metavar="BOOL",
        help="write one access log line per request (JSON with --log-as-json)",
    )
    add(
        "--dapr-graceful-shutdown-seconds",
        dest="graceful_shutdown_seconds",
        type=_seconds,
        metavar="SECONDS",
        help="how long in-flight requests may finish on shutdown "
        f"(default: {_DEFAULTS.graceful_shutdown_seconds:g})",
    )
    add(
        "--keep-alive-timeout",
        dest="keep_alive_timeout",
        type=_positive_seconds,
        metavar="SECONDS",
        help="close a client connection idle this long "
        f"(fastproxy only; default: {_DEFAULTS.keep_alive_timeout:g})",
    )
    add(
        "--header-timeout",
        dest="header_timeout",
        type=_positive_seconds,
        metavar="SECONDS",
        help="give up on a client that has not sent a full request head in this time "
        f"(fastproxy only; default: {_DEFAULTS.header_timeout:g})",
    )
    add(
        "--enable-mtls",
        dest="enable_mtls",
        action="store_true",
        default=None,
        help="refuse to start without the three mTLS settings below; mTLS between sidecars "
        "is on whenever all three are given ('fastproxy certs' makes a development set)",
    )
    add(
        "--trust-anchors",
        dest="trust_anchors",
        type=_pem_or_path,
        metavar="PEM|FILE",
        help="CA certificates that peer sidecars' certificates must chain to: PEM text "
        "or a file, re-read when it changes (env DAPR_TRUST_ANCHORS)",
    )
    add(
        "--cert-chain",
        dest="cert_chain",
        type=_pem_or_path,
        metavar="PEM|FILE",
        help="this sidecar's certificate, then any intermediates: PEM text or a file, "
        "re-read when it changes; its URI SAN spiffe://<trust-domain>/ns/<namespace>/<app-id> "
        "is the identity peers see (env DAPR_CERT_CHAIN)",
    )
    add(
        "--cert-key",
        dest="cert_key",
        type=_pem_or_path,
        metavar="PEM|FILE",
        help="the private key of --cert-chain: PEM text or a file, re-read when it changes "
        "(env DAPR_CERT_KEY)",
    )


def _add_certs_flags(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--out",
        dest="out",
        required=True,
        metavar="DIR",
        help="folder for ca.pem, ca.key and <app>.pem, <app>.key (created if missing); "
        "a CA already there is reused, so apps can be added later",
    )
    add(
        "--app-id",
        dest="app_ids",
        action="extend",
        type=_app_ids,
        required=True,
        metavar="ID[,ID...]",
        help="app to issue a certificate for; repeatable or comma-separated",
    )
    add(
        "--namespace",
        dest="namespace",
        default="default",
        metavar="NS",
        help="namespace in the certificates' SPIFFE ids; run the sidecars with the same "
        "NAMESPACE (default: default)",
    )
    add(
        "--trust-domain",
        dest="trust_domain",
        default="public",
        metavar="DOMAIN",
        help="trust domain in the SPIFFE ids (default: public)",
    )
    add(
        "--days",
        dest="days",
        type=_days,
        default=365,
        metavar="DAYS",
        help="validity of a new CA and of each certificate (default: 365)",
    )


def _build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    flags = argparse.ArgumentParser(add_help=False)
    _add_flags(flags)
    parser = argparse.ArgumentParser(
        prog="fastproxy",
        description="A fast, Dapr-compatible service-invocation sidecar.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {
        "run": sub.add_parser(
            "run",
            parents=[flags],
            allow_abbrev=False,
            help="run the sidecar next to an app",
            description="Run the sidecar. Flags follow daprd; '-flag' works like '--flag'.",
        ),
        "demo": sub.add_parser(
            "demo",
            parents=[flags],
            allow_abbrev=False,
            help="run the sidecar with a built-in demo app",
            description="Run the sidecar with a built-in demo app; takes the same flags as run.",
        ),
        "certs": sub.add_parser(
            "certs",
            allow_abbrev=False,
            help="create a development CA and per-app certificates for mTLS",
            description="Create a development CA (or reuse the one in --out) and a "
            "certificate per app whose URI SAN is spiffe://<trust-domain>/ns/<namespace>/<app>, "
            "then print the environment that turns mTLS on for each sidecar. <app>.pem holds "
            "the app's certificate only: every sidecar already trusts ca.pem.",
        ),
    }
    _add_certs_flags(commands["certs"])
    parser.epilog = "run and demo take these flags:\n\n" + commands["run"].format_help()
    return parser, commands


# --- argv + environ -> Config ------------------------------------------------

# Flags that `dapr run` also passes through the environment; a given flag wins.
_ENV_FLAGS: tuple[tuple[str, str, Callable[[str], Any]], ...] = (
    ("APP_ID", "app_id", _app_id),
    ("APP_PORT", "app_port", _port),
    ("DAPR_HTTP_PORT", "http_port", _port),
    ("DAPR_METRICS_PORT", "metrics_port", _port),
    ("DAPR_TRUST_ANCHORS", "trust_anchors", _pem_or_path),
    ("DAPR_CERT_CHAIN", "cert_chain", _pem_or_path),
    ("DAPR_CERT_KEY", "cert_key", _pem_or_path),
)
_ENV_ONLY = (
    ("DAPR_API_TOKEN", "api_token"),
    ("APP_API_TOKEN", "app_api_token"),
    ("NAMESPACE", "namespace"),
    ("DAPR_HOST_IP", "host_address"),
)


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """Rewrite daprd's single-dash long flags (`-app-id`) to `--app-id`."""
    out: list[str] = []
    for index, arg in enumerate(argv):
        if arg == "--":
            return out + list(argv[index:])
        out.append("-" + arg if _SINGLE_DASH_LONG.match(arg) else arg)
    return out


@dataclass(frozen=True, slots=True)
class CertsOptions:
    """What `fastproxy certs` was asked for."""

    out: str
    app_ids: tuple[str, ...]
    namespace: str = "default"
    trust_domain: str = "public"
    days: int = 365


def build_config(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[str, Config]:
    """Parse `argv` (without the program name) and `environ` into (command, Config).

    Bad input exits through argparse (status 2) with the flag or variable named;
    so does `certs`, which runs no sidecar (see `parse_command`).
    """
    command, options = parse_command(argv, environ)
    if not isinstance(options, Config):
        _build_parser()[1][command].error("this command builds no sidecar Config")
    return command, options


def parse_command(
    argv: Sequence[str], environ: Mapping[str, str]
) -> tuple[str, Config | CertsOptions]:
    """Like `build_config`, but also accepts `certs` (which reads no environment)."""
    parser, commands = _build_parser()
    namespace = parser.parse_args(normalize_argv(argv))
    command: str = namespace.command
    settings = {k: v for k, v in vars(namespace).items() if k != "command" and v is not None}
    if command == "certs":
        settings["app_ids"] = tuple(dict.fromkeys(settings["app_ids"]))
        return command, CertsOptions(**settings)
    try:
        _apply_environ(settings, environ)
    except argparse.ArgumentTypeError as exc:
        commands[command].error(str(exc))
    _apply_command_defaults(command, settings, commands[command])
    _check_mtls(settings, commands[command])
    if "resources_paths" in settings:
        settings["resources_paths"] = tuple(settings["resources_paths"])
    return command, Config(**settings)


def _apply_environ(settings: dict[str, Any], environ: Mapping[str, str]) -> None:
    for var, field, parse in _ENV_FLAGS:
        value = environ.get(var, "")
        if field not in settings and value:
            try:
                settings[field] = parse(value)
            except argparse.ArgumentTypeError as exc:
                raise argparse.ArgumentTypeError(f"environment variable {var}: {exc}") from None
    for var, field in _ENV_ONLY:
        if environ.get(var):
            settings[field] = environ[var]


def _apply_command_defaults(
    command: str, settings: dict[str, Any], parser: argparse.ArgumentParser
) -> None:
    if command == "demo":
        settings.setdefault("app_id", "demo")
        settings.setdefault("app_port", 0)
        settings.setdefault("internal_port", 0)
        # The demo's metrics: any free port, on loopback only.
        settings.setdefault("metrics_port", 0)
        settings.setdefault("metrics_listen_address", "127.0.0.1")
    elif "app_id" not in settings:
        parser.error("--app-id is required (or set APP_ID)")


def _check_mtls(settings: dict[str, Any], parser: argparse.ArgumentParser) -> None:
    """All three mTLS settings or none; `--enable-mtls` insists on all three."""
    missing = [f"{flag} (or {env})" for field, flag, env in _MTLS_MATERIAL if field not in settings]
    if not missing:
        return
    if len(missing) < len(_MTLS_MATERIAL):
        parser.error(
            "mTLS needs --trust-anchors, --cert-chain and --cert-key together; "
            f"missing: {', '.join(missing)}"
        )
    if settings.get("enable_mtls"):
        parser.error(
            f"--enable-mtls needs the mTLS material; missing: {', '.join(missing)} "
            "('fastproxy certs' creates a development set)"
        )


# --- entry point ---------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the process exit status."""
    try:
        command, options = parse_command(sys.argv[1:] if argv is None else argv, os.environ)
    except SystemExit as exc:
        return _exit_status(exc)
    try:
        if isinstance(options, CertsOptions):
            return _run_certs(options)
        module_name, attribute = _RUNNERS[command]
        runner = getattr(importlib.import_module(module_name), attribute)
        return int(runner(options))
    except ConfigError as exc:
        print(f"fastproxy: {exc}", file=sys.stderr)
        return 1


def _run_certs(options: CertsOptions) -> int:
    """Write the bundle, then print the environment each sidecar runs with."""
    certs = importlib.import_module(_CERTS_MODULE)
    out = Path(options.out)
    written = certs.write_bundle(
        out, options.app_ids, options.namespace, options.trust_domain, options.days
    )
    ca_cert, ca_key = out / certs.CA_CERT, out / certs.CA_KEY
    if ca_cert in written:
        print(f"created a development CA for trust domain {options.trust_domain}: {ca_cert}")
    else:
        print(f"reused the CA in {ca_cert}")
    print(f"keep {ca_key} private: it can issue certificates every sidecar trusts")
    prefix = f"spiffe://{options.trust_domain}/ns/{options.namespace}"
    for app in options.app_ids:
        print(f"issued {out / app}.pem and {out / app}.key for {prefix}/{app}")
    print("\nrun each sidecar with its certificate:")
    for app in options.app_ids:
        env = [
            f"DAPR_TRUST_ANCHORS={shlex.quote(str(ca_cert))}",
            f"DAPR_CERT_CHAIN={shlex.quote(str(out / f'{app}.pem'))}",
            f"DAPR_CERT_KEY={shlex.quote(str(out / f'{app}.key'))}",
        ]
        if options.namespace != "default":
            env.insert(0, f"NAMESPACE={shlex.quote(options.namespace)}")
        print(f"  {' '.join(env)} fastproxy run --enable-mtls --app-id {app} ...")
    return 0


def _exit_status(exc: SystemExit) -> int:
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)
    return 1
