"""The `fastproxy` command: daprd's flags and environment turned into a `Config`.

`build_config` is pure (argv and environ in, `Config` out) so every flag can be
tested without a process, and the CLI and the library can never drift apart.
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
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


# --- value parsers (shared by flags and environment variables) ---------------


def _port(text: str) -> int:
    if not _DIGITS.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: not a whole number")
    value = int(text)
    if value > _MAX_PORT:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: must be 0..{_MAX_PORT}")
    return value


def _app_id(text: str) -> str:
    if not text or _APP_ID_FORBIDDEN.search(text):
        raise argparse.ArgumentTypeError(
            f"invalid app id {text!r}: must be non-empty, without dots, '/' or whitespace"
        )
    return text


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
    }
    parser.epilog = "run and demo take these flags:\n\n" + commands["run"].format_help()
    return parser, commands


# --- argv + environ -> Config ------------------------------------------------

# Flags that `dapr run` also passes through the environment; a given flag wins.
_ENV_FLAGS: tuple[tuple[str, str, Callable[[str], Any]], ...] = (
    ("APP_ID", "app_id", _app_id),
    ("APP_PORT", "app_port", _port),
    ("DAPR_HTTP_PORT", "http_port", _port),
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


def build_config(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[str, Config]:
    """Parse `argv` (without the program name) and `environ` into (command, Config).

    Bad input exits through argparse (status 2) with the flag or variable named.
    """
    parser, commands = _build_parser()
    namespace = parser.parse_args(normalize_argv(argv))
    command: str = namespace.command
    settings = {k: v for k, v in vars(namespace).items() if k != "command" and v is not None}
    try:
        _apply_environ(settings, environ)
    except argparse.ArgumentTypeError as exc:
        commands[command].error(str(exc))
    _apply_command_defaults(command, settings, commands[command])
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
    elif "app_id" not in settings:
        parser.error("--app-id is required (or set APP_ID)")


# --- entry point ---------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the process exit status."""
    try:
        command, config = build_config(sys.argv[1:] if argv is None else argv, os.environ)
    except SystemExit as exc:
        return _exit_status(exc)
    module_name, attribute = _RUNNERS[command]
    try:
        runner = getattr(importlib.import_module(module_name), attribute)
        return int(runner(config))
    except ConfigError as exc:
        print(f"fastproxy: {exc}", file=sys.stderr)
        return 1


def _exit_status(exc: SystemExit) -> int:
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)
    return 1
