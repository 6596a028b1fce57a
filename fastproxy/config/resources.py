"""Read Dapr resource YAML (`--resources-path`, `--config`) into `Resources`.

Everything is checked once at start-up so a typo fails loudly with the file
and document it came from, instead of surfacing later as a routing miss.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from fastproxy.config.errors import ConfigError
from fastproxy.config.model import ClientTLS, HTTPEndpoint, Resources

_API_VERSION = "dapr.io/v1alpha1"
_YAML_SUFFIXES = (".yaml", ".yml")
# RFC 9110 token characters: anything else in a header name would corrupt the head.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Characters that cannot survive as one path segment of /v1.0/invoke/<name>/method/...
_NAME_FORBIDDEN = re.compile(r"[\s/?#%]")
_URL_LIKE_NAME = re.compile(r"https?:", re.IGNORECASE)
_NO_SECRETS = "secretKeyRef is not supported (fastproxy has no secret stores); use 'value'"
_TLS_FIELDS = (("rootCA", "root_ca"), ("certificate", "certificate"), ("privateKey", "private_key"))


@dataclass(frozen=True, slots=True)
class _Document:
    """One YAML document plus where it came from, for error messages."""

    file: Path
    index: int
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    def error(self, problem: str) -> ConfigError:
        return ConfigError(f"{self.file}: document {self.index}: {problem}")


# --- entry point ------------------------------------------------------------


def load_resources(paths: Sequence[str], config_file: str | None, app_id: str) -> Resources:
    """Load every resource under `paths` and the Configuration in `config_file`.

    Kinds we do not act on are listed in `skipped_kinds` rather than rejected,
    so a daprd resources folder can be pointed at fastproxy unchanged.
    """
    endpoints: dict[str, HTTPEndpoint] = {}
    configuration: _Document | None = None
    resiliency: list[dict[str, Any]] = []
    skipped: dict[str, None] = {}
    for doc in _documents_in(_resource_files(paths)):
        if doc.kind == "HTTPEndpoint":
            _add_endpoint(endpoints, doc, app_id)
        elif doc.kind == "Resiliency":
            # Checked when the policies are built (fastproxy.resiliency), which
            # also applies the document's scopes.
            resiliency.append({**doc.body, "source": str(doc.file)})
        elif doc.kind == "Configuration":
            if configuration is not None:
                raise doc.error(
                    f"a second Configuration ({doc.name!r}); "
                    f"one was already loaded from {configuration.file}"
                )
            configuration = doc
        else:
            skipped.setdefault(doc.kind, None)
    if config_file is not None:
        configuration = _config_file_document(config_file, skipped)
    spec = _configuration_spec(configuration) if configuration is not None else {}
    return Resources(
        http_endpoints=endpoints,
        configuration=spec,
        resiliency=tuple(resiliency),
        skipped_kinds=tuple(skipped),
    )


# --- files and documents ----------------------------------------------------


def _resource_files(paths: Sequence[str]) -> list[Path]:
    """Expand folders to their YAML files; a file named twice is read once."""
    files: list[Path] = []
    seen: set[Path] = set()
    for raw in paths:
        for file in _files_at(Path(raw), raw):
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                files.append(file)
    return files


def _files_at(path: Path, raw: str) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in _YAML_SUFFIXES and p.is_file())
    if path.is_file():
        return [path]
    raise ConfigError(f"resources path {raw!r} does not exist")


def _config_file_document(config_file: str, skipped: dict[str, None]) -> _Document:
    path = Path(config_file)
    if not path.is_file():
        raise ConfigError(f"config file {config_file!r} does not exist or is not a file")
    found: _Document | None = None
    for doc in _documents_in([path]):
        if doc.kind != "Configuration":
            skipped.setdefault(doc.kind, None)
        elif found is not None:
            raise doc.error("a second Configuration in the config file")
        else:
            found = doc
    if found is None:
        raise ConfigError(f"{path}: config file holds no document of kind Configuration")
    return found


def _documents_in(files: Sequence[Path]) -> Iterator[_Document]:
    for file in files:
        for index, body in enumerate(_load_yaml(file), start=1):
            if body is None:
                continue
            yield _checked_document(file, index, body)


def _load_yaml(file: Path) -> list[Any]:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read: {exc}") from exc
    try:
        return list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: invalid YAML{_yaml_where(exc)}: {_yaml_problem(exc)}") from exc


def _yaml_where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is None:
        return ""
    return f" at line {mark.line + 1}, column {mark.column + 1}"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None)
    context = getattr(exc, "context", None)
    parts = [str(p) for p in (context, problem) if p]
    return ", ".join(parts) if parts else str(exc)


def _checked_document(file: Path, index: int, body: Any) -> _Document:
    doc = _Document(file, index, body if isinstance(body, dict) else {})
    if not isinstance(body, dict):
        raise doc.error(f"expected a mapping, found {_type_name(body)}")
    if not isinstance(body.get("kind"), str) or not body["kind"]:
        raise doc.error("'kind' is missing or not a string")
    metadata = body.get("metadata")
    if not isinstance(metadata, dict):
        raise doc.error("'metadata' is missing or not a mapping")
    if not isinstance(metadata.get("name"), str) or not metadata["name"]:
        raise doc.error("'metadata.name' is missing or not a string")
    return doc


def _type_name(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


# --- Configuration ----------------------------------------------------------


def _configuration_spec(doc: _Document) -> dict[str, Any]:
    _check_api_version(doc)
    spec = doc.body.get("spec")
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise doc.error(f"Configuration {doc.name!r}: 'spec' must be a mapping")
    return spec


def _check_api_version(doc: _Document) -> None:
    version = doc.body.get("apiVersion")
    if version is not None and version != _API_VERSION:
        raise doc.error(f"{doc.kind} {doc.name!r}: apiVersion must be {_API_VERSION!r}")


# --- HTTPEndpoint -----------------------------------------------------------


def _add_endpoint(endpoints: dict[str, HTTPEndpoint], doc: _Document, app_id: str) -> None:
    if not _in_scope(doc, app_id):
        return
    endpoint = _parse_endpoint(doc)
    first = endpoints.get(endpoint.name)
    if first is not None:
        raise doc.error(
            f"HTTPEndpoint {endpoint.name!r} is defined twice: in {first.source} and in {doc.file}"
        )
    endpoints[endpoint.name] = endpoint


def _in_scope(doc: _Document, app_id: str) -> bool:
    """Dapr's rule: no scopes, or an empty list, means every app loads it."""
    scopes = doc.body.get("scopes")
    if scopes is None:
        return True
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise doc.error(f"{doc.kind} {doc.name!r}: 'scopes' must be a list of app ids")
    return not scopes or app_id in scopes


def _parse_endpoint(doc: _Document) -> HTTPEndpoint:
    _check_api_version(doc)
    _check_endpoint_name(doc)
    spec = doc.body.get("spec")
    if not isinstance(spec, dict):
        raise doc.error(f"HTTPEndpoint {doc.name!r}: 'spec' is missing or not a mapping")
    base_url = _base_url(doc, spec.get("baseUrl"))
    client_tls = _client_tls(doc, spec.get("clientTLS"))
    if client_tls is not None and base_url.lower().startswith("http://"):
        raise doc.error(
            f"HTTPEndpoint {doc.name!r}: clientTLS is set but baseUrl {base_url!r} is plain http"
        )
    return HTTPEndpoint(
        name=doc.name,
        base_url=base_url,
        headers=_headers(doc, spec.get("headers")),
        client_tls=client_tls,
        source=str(doc.file),
    )


def _check_endpoint_name(doc: _Document) -> None:
    name = doc.name
    if _NAME_FORBIDDEN.search(name):
        raise doc.error(
            f"HTTPEndpoint name {name!r} must not contain whitespace, '/', '?', '#' or '%'"
        )
    if _URL_LIKE_NAME.match(name):
        raise doc.error(f"HTTPEndpoint name {name!r} must not look like a URL")


def _base_url(doc: _Document, value: Any) -> str:
    where = f"HTTPEndpoint {doc.name!r}: spec.baseUrl"
    if not isinstance(value, str) or not value:
        raise doc.error(f"{where} is required and must be a string")
    if not value.lower().startswith(("http://", "https://")):
        raise doc.error(f"{where} {value!r} must start with http:// or https://")
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError as exc:
        raise doc.error(f"{where} {value!r} is not a valid URL: {exc}") from exc
    if not parts.hostname:
        raise doc.error(f"{where} {value!r} has no host")
    return value


def _headers(doc: _Document, value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise doc.error(f"HTTPEndpoint {doc.name!r}: spec.headers must be a list")
    return tuple(_header(doc, n, item) for n, item in enumerate(value, start=1))


def _header(doc: _Document, position: int, item: Any) -> tuple[str, str]:
    where = f"HTTPEndpoint {doc.name!r}: spec.headers[{position}]"
    if not isinstance(item, dict):
        raise doc.error(f"{where} must be a mapping with 'name' and 'value'")
    name = item.get("name")
    if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
        raise doc.error(f"{where}: 'name' is missing or not a valid header name")
    if "secretKeyRef" in item:
        raise doc.error(f"{where} ({name}): {_NO_SECRETS}")
    text = _scalar_text(item.get("value"))
    if text is None:
        raise doc.error(f"{where} ({name}): 'value' is missing or not a scalar")
    if "\r" in text or "\n" in text:
        raise doc.error(f"{where} ({name}): 'value' must not contain line breaks")
    return name, text


def _scalar_text(value: Any) -> str | None:
    """YAML turns `value: 10` into an int; a header wants the text back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


def _client_tls(doc: _Document, value: Any) -> ClientTLS | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise doc.error(f"HTTPEndpoint {doc.name!r}: spec.clientTLS must be a mapping")
    pems = {attr: _pem(doc, key, value.get(key)) for key, attr in _TLS_FIELDS}
    if (pems["certificate"] is None) != (pems["private_key"] is None):
        raise doc.error(
            f"HTTPEndpoint {doc.name!r}: clientTLS certificate and privateKey must be set together"
        )
    if all(pem is None for pem in pems.values()):
        return None
    return ClientTLS(**pems)


def _pem(doc: _Document, key: str, value: Any) -> str | None:
    where = f"HTTPEndpoint {doc.name!r}: spec.clientTLS.{key}"
    if isinstance(value, Mapping):
        if "secretKeyRef" in value:
            raise doc.error(f"{where}: {_NO_SECRETS}")
        value = value.get("value")
    if value is None:
        return None
    if not isinstance(value, str) or "-----BEGIN " not in value:
        raise doc.error(f"{where} must be PEM text (a '-----BEGIN ...' block)")
    return value
