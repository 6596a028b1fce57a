"""nginx configurations for the benchmark: the upstream app and the reverse-proxy baseline.

Both are tuned the same way (1 worker, no access log, long keep-alive) so the comparison
with fastproxy measures proxying cost rather than configuration differences.
"""

from __future__ import annotations

from pathlib import Path

# Names used for the config, pid, log and temp paths of each instance in the work dir.
UPSTREAM = "upstream"
PROXY = "nginx-proxy"
RETRY_PROXY = "nginx-retry"

# Attempts nginx-retry makes per request: the first one plus 3 retries (maxRetries: 3).
RETRY_TRIES = 4

SMALL_BODY = "hello, world\n"

# Response sizes the upstream serves: name -> body length in bytes.
SIZES: dict[str, int] = {"small": len(SMALL_BODY), "4k": 4096, "64k": 65536}

# Requests per keep-alive connection before nginx closes it. High enough that no
# connection is recycled within a run (c1 direct reaches ~15k rps x 11 s).
KEEPALIVE_REQUESTS = 10_000_000


def body_for(size_name: str) -> bytes:
    """The exact bytes the upstream returns for ``/<size_name>``, for the sanity check."""
    if size_name == "small":
        return SMALL_BODY.encode()
    n = SIZES[size_name]
    pattern = b"0123456789abcdef"
    return (pattern * (n // len(pattern) + 1))[: n - 1] + b"\n"


def write_bodies(directory: Path) -> None:
    """Write the static files the upstream serves for the non-small sizes."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in SIZES:
        if name != "small":
            (directory / name).write_bytes(body_for(name))


def error_log(workdir: Path, name: str) -> Path:
    """Where instance ``name`` logs errors; shown when it fails."""
    return workdir / f"{name}-error.log"


def temp_root(workdir: Path, name: str) -> Path:
    """Parent of instance ``name``'s temp paths; must exist before nginx starts."""
    return workdir / f"{name}-tmp"


def _common_head(workdir: Path, name: str, as_root: bool) -> str:
    user = "user root;\n" if as_root else ""
    return (
        f"{user}"
        "worker_processes 1;\n"
        "daemon off;\n"
        "master_process on;\n"
        f"pid {workdir / (name + '.pid')};\n"
        f"error_log {error_log(workdir, name)} warn;\n"
        "events {\n"
        "    worker_connections 4096;\n"
        "    multi_accept on;\n"
        "}\n"
    )


def _http_head(workdir: Path, name: str) -> str:
    tmp = temp_root(workdir, name)
    return (
        "    access_log off;\n"
        "    log_not_found off;\n"
        "    server_tokens off;\n"
        f"    client_body_temp_path {tmp / 'client_body'};\n"
        f"    proxy_temp_path {tmp / 'proxy'};\n"
        f"    fastcgi_temp_path {tmp / 'fastcgi'};\n"
        f"    uwsgi_temp_path {tmp / 'uwsgi'};\n"
        f"    scgi_temp_path {tmp / 'scgi'};\n"
        f"    keepalive_requests {KEEPALIVE_REQUESTS};\n"
        "    keepalive_timeout 75s;\n"
        "    tcp_nodelay on;\n"
    )


def upstream_conf(workdir: Path, port: int, bodies_dir: Path, as_root: bool) -> str:
    """The app: fixed 200 responses of 13 B, 4 KiB and 64 KiB over keep-alive."""
    small = SMALL_BODY.replace("\n", "\\n")
    locations = "".join(
        f"        location = /{name} {{\n"
        "            default_type application/octet-stream;\n"
        f"            alias {bodies_dir / name};\n"
        "        }\n"
        for name in SIZES
        if name != "small"
    )
    return (
        _common_head(workdir, UPSTREAM, as_root)
        + "http {\n"
        + _http_head(workdir, UPSTREAM)
        + "    sendfile on;\n"
        "    etag off;\n"
        "    server {\n"
        f"        listen 127.0.0.1:{port} backlog=4096;\n"
        "        location = /small {\n"
        "            default_type text/plain;\n"
        f'            return 200 "{small}";\n'
        "        }\n" + locations + "    }\n"
        "}\n"
    )


def proxy_conf(workdir: Path, port: int, upstream_port: int, as_root: bool) -> str:
    """The baseline: nginx doing the same /v1.0/invoke/<id>/method/<path> rewrite as fastproxy.

    Upstream keep-alive connections are reused for as long as possible (``keepalive 64``
    plus a high ``keepalive_requests``) and responses are never spooled to temp files,
    so the baseline is nginx at its realistic best rather than at its defaults.
    """
    return _proxy_conf(
        workdir, PROXY, port, f"        server 127.0.0.1:{upstream_port};\n", "", as_root
    )


def retry_proxy_conf(
    workdir: Path, port: int, upstream_port: int, as_root: bool, tries: int = RETRY_TRIES
) -> str:
    """nginx-proxy that retries a 503 from the app, the native baseline of the retry case.

    nginx only passes a request to the *next* server of the group, at most once per server,
    so the one app is listed ``tries`` times (``max_fails=0``: never marked down).
    ``proxy_next_upstream`` keeps nginx's default ``error timeout`` (fastproxy also retries
    a failed connection) and adds ``http_503`` and ``non_idempotent`` (so any method is
    retried, as the Resiliency policy does); ``proxy_next_upstream_tries`` caps the attempts
    at ``tries`` = 1 + 3 retries, as ``maxRetries: 3``. Otherwise the same as ``proxy_conf``.
    """
    if tries < 1:
        raise ValueError("tries must be >= 1")
    servers = f"        server 127.0.0.1:{upstream_port} max_fails=0;\n" * tries
    retry = (
        "            proxy_next_upstream error timeout http_503 non_idempotent;\n"
        f"            proxy_next_upstream_tries {tries};\n"
    )
    return _proxy_conf(workdir, RETRY_PROXY, port, servers, retry, as_root)


def _proxy_conf(
    workdir: Path, name: str, port: int, servers: str, location_extra: str, as_root: bool
) -> str:
    return (
        _common_head(workdir, name, as_root)
        + "http {\n"
        + _http_head(workdir, name)
        + "    upstream up {\n"
        + servers
        + "        keepalive 64;\n"
        f"        keepalive_requests {KEEPALIVE_REQUESTS};\n"
        "    }\n"
        "    server {\n"
        f"        listen 127.0.0.1:{port} backlog=4096;\n"
        r"        location ~ ^/v1\.0/invoke/[^/]+/method/(.*)$ {" + "\n"
        "            proxy_pass http://up/$1$is_args$args;\n"
        "            proxy_http_version 1.1;\n"
        '            proxy_set_header Connection "";\n'
        "            proxy_max_temp_file_size 0;\n" + location_extra + "        }\n"
        "    }\n"
        "}\n"
    )
