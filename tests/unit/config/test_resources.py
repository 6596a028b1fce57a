"""Loading resource YAML from --resources-path folders and the --config file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from fastproxy.config import ClientTLS, ConfigError, HTTPEndpoint, Resources, load_resources

CA = "-----BEGIN CERTIFICATE-----\nMIIBca\n-----END CERTIFICATE-----\n"
CERT = "-----BEGIN CERTIFICATE-----\nMIIBcert\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIEkey\n-----END PRIVATE KEY-----\n"


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def endpoint_yaml(name: str = "ep", base_url: str = "http://example.test", extra: str = "") -> str:
    """An HTTPEndpoint document; `extra` is YAML indented under `spec`."""
    spec_extra = textwrap.indent(textwrap.dedent(extra), "  ")
    return (
        "apiVersion: dapr.io/v1alpha1\n"
        "kind: HTTPEndpoint\n"
        f"metadata:\n  name: {name}\n"
        f"spec:\n  baseUrl: {base_url}\n{spec_extra}"
    )


def pem_block(text: str, indent: int) -> str:
    """`text` as a YAML literal block, indented for use under a key."""
    return "|\n" + textwrap.indent(text, " " * indent)


CONFIGURATION = """\
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: {name}
spec:
  tracing:
    samplingRate: "{rate}"
"""

COMPONENT = """\
kind: {kind}
metadata:
  name: {name}
"""


# --- HTTPEndpoint: what is loaded -----------------------------------------------


def test_http_endpoint_fields_are_loaded(tmp_path: Path) -> None:
    extra = (
        "headers:\n"
        "- name: Accept-Language\n"
        "  value: en-US\n"
        "- name: X-Count\n"
        "  value: 10\n"
        "clientTLS:\n"
        f"  rootCA:\n    value: {pem_block(CA, 6)}"
        f"  certificate:\n    value: {pem_block(CERT, 6)}"
        f"  privateKey:\n    value: {pem_block(KEY, 6)}"
    )
    file = write(tmp_path, "github.yaml", endpoint_yaml("github", "https://api.github.com", extra))

    resources = load_resources([str(tmp_path)], None, "app")

    assert resources == Resources(
        http_endpoints={
            "github": HTTPEndpoint(
                name="github",
                base_url="https://api.github.com",
                headers=(("Accept-Language", "en-US"), ("X-Count", "10")),
                client_tls=ClientTLS(root_ca=CA, certificate=CERT, private_key=KEY),
                source=str(file),
            )
        }
    )


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param(
            f"clientTLS:\n  rootCA:\n    value: {pem_block(CA, 6)}",
            ClientTLS(root_ca=CA),
            id="root-ca-only-value-mapping",
        ),
        pytest.param(
            f"clientTLS:\n  rootCA: {pem_block(CA, 4)}",
            ClientTLS(root_ca=CA),
            id="plain-string",
        ),
        pytest.param(
            f"clientTLS:\n  certificate: {pem_block(CERT, 4)}"
            f"  privateKey:\n    value: {pem_block(KEY, 6)}",
            ClientTLS(certificate=CERT, private_key=KEY),
            id="client-cert-pair-mixed-forms",
        ),
        pytest.param("clientTLS: {}\n", None, id="empty-mapping-means-none"),
        pytest.param("clientTLS:\n  renegotiation: never\n", None, id="unknown-keys-ignored"),
        pytest.param("clientTLS:\n  rootCA: {value: null}\n", None, id="null-value-means-unset"),
    ],
)
def test_client_tls_forms(tmp_path: Path, extra: str, expected: ClientTLS | None) -> None:
    write(tmp_path, "ep.yaml", endpoint_yaml(base_url="https://example.test", extra=extra))

    resources = load_resources([str(tmp_path)], None, "app")

    assert resources.http_endpoints["ep"].client_tls == expected


@pytest.mark.parametrize(
    ("value_yaml", "expected"),
    [
        pytest.param("plain", "plain", id="string"),
        pytest.param('"007"', "007", id="quoted-digits-kept"),
        pytest.param("10", "10", id="int"),
        pytest.param("1.5", "1.5", id="float"),
        pytest.param("true", "true", id="bool-true"),
        pytest.param("false", "false", id="bool-false"),
        pytest.param('""', "", id="empty-string"),
    ],
)
def test_header_scalar_values_become_text(tmp_path: Path, value_yaml: str, expected: str) -> None:
    extra = f"headers:\n- name: X-V\n  value: {value_yaml}\n"
    write(tmp_path, "ep.yaml", endpoint_yaml(extra=extra))

    resources = load_resources([str(tmp_path)], None, "app")

    assert resources.http_endpoints["ep"].headers == (("X-V", expected),)


def test_folder_reads_yaml_and_yml_sorted_and_not_recursive(tmp_path: Path) -> None:
    write(tmp_path, "b.yaml", endpoint_yaml("bee"))
    write(tmp_path, "a.yml", endpoint_yaml("ay"))
    write(tmp_path, "notes.txt", "{{{ not yaml")
    write(tmp_path / "nested", "c.yaml", "{{{ not yaml")

    resources = load_resources([str(tmp_path)], None, "app")

    assert list(resources.http_endpoints) == ["ay", "bee"]
    assert resources.http_endpoints["ay"].source == str(tmp_path / "a.yml")


def test_single_file_path_and_several_paths(tmp_path: Path) -> None:
    one = write(tmp_path / "one", "x.txt", endpoint_yaml("from-file"))
    write(tmp_path / "two", "y.yaml", endpoint_yaml("from-folder"))

    resources = load_resources([str(one), str(tmp_path / "two")], None, "app")

    assert list(resources.http_endpoints) == ["from-file", "from-folder"]


def test_same_file_named_twice_is_read_once(tmp_path: Path) -> None:
    file = write(tmp_path, "ep.yaml", endpoint_yaml("ep"))

    resources = load_resources([str(tmp_path), str(file)], None, "app")

    assert list(resources.http_endpoints) == ["ep"]


def test_multi_document_file_skips_empty_documents(tmp_path: Path) -> None:
    text = "---\n---\n" + endpoint_yaml("one") + "---\n\n---\n" + endpoint_yaml("two") + "---\n"
    write(tmp_path, "many.yaml", text)

    resources = load_resources([str(tmp_path)], None, "app")

    assert list(resources.http_endpoints) == ["one", "two"]


def test_no_paths_and_no_config_give_empty_resources() -> None:
    assert load_resources([], None, "app") == Resources()


def test_empty_folder_gives_empty_resources(tmp_path: Path) -> None:
    assert load_resources([str(tmp_path)], None, "app") == Resources()


@pytest.mark.parametrize(
    ("scopes_yaml", "loaded"),
    [
        pytest.param("", True, id="no-scopes"),
        pytest.param("scopes: [app]\n", True, id="app-in-scopes"),
        pytest.param("scopes: [other, app]\n", True, id="app-among-several"),
        pytest.param("scopes: [other]\n", False, id="app-not-in-scopes"),
        pytest.param("scopes: []\n", True, id="empty-list-means-everyone"),
        pytest.param("scopes:\n", True, id="null-scopes"),
    ],
)
def test_scopes_decide_whether_endpoint_loads(
    tmp_path: Path, scopes_yaml: str, loaded: bool
) -> None:
    write(tmp_path, "ep.yaml", scopes_yaml + endpoint_yaml("ep"))

    resources = load_resources([str(tmp_path)], None, "app")

    assert ("ep" in resources.http_endpoints) is loaded


def test_out_of_scope_endpoint_does_not_count_as_duplicate(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "scopes: [other]\n" + endpoint_yaml("ep", "http://other.test"))
    write(tmp_path, "b.yaml", endpoint_yaml("ep", "http://mine.test"))

    resources = load_resources([str(tmp_path)], None, "app")

    assert resources.http_endpoints["ep"].base_url == "http://mine.test"


# --- Configuration and other kinds -------------------------------------------------


def test_configuration_in_resources_path(tmp_path: Path) -> None:
    write(tmp_path, "config.yaml", CONFIGURATION.format(name="c", rate="1"))

    resources = load_resources([str(tmp_path)], None, "app")

    assert resources.configuration == {"tracing": {"samplingRate": "1"}}


def test_configuration_without_spec_is_empty(tmp_path: Path) -> None:
    config = write(tmp_path, "config.yaml", "kind: Configuration\nmetadata:\n  name: c\n")

    resources = load_resources([], str(config), "app")

    assert resources.configuration == {}


def test_config_file_wins_over_resources_path(tmp_path: Path) -> None:
    write(tmp_path / "res", "config.yaml", CONFIGURATION.format(name="from-res", rate="0"))
    config = write(tmp_path, "config.yaml", CONFIGURATION.format(name="from-file", rate="1"))

    resources = load_resources([str(tmp_path / "res")], str(config), "app")

    assert resources.configuration == {"tracing": {"samplingRate": "1"}}


def test_config_file_other_kinds_are_skipped_not_loaded(tmp_path: Path) -> None:
    text = CONFIGURATION.format(name="c", rate="1") + "---\n" + endpoint_yaml("ep")
    config = write(tmp_path, "config.yaml", text)

    resources = load_resources([], str(config), "app")

    assert resources.http_endpoints == {}
    assert resources.skipped_kinds == ("HTTPEndpoint",)


def test_other_kinds_recorded_once_in_first_seen_order(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", COMPONENT.format(kind="Component", name="statestore"))
    write(
        tmp_path,
        "b.yaml",
        COMPONENT.format(kind="Subscription", name="s1")
        + "---\n"
        + COMPONENT.format(kind="Component", name="pubsub"),
    )
    write(tmp_path, "c.yaml", COMPONENT.format(kind="Subscription", name="s2"))

    resources = load_resources([str(tmp_path)], None, "app")

    assert resources.skipped_kinds == ("Component", "Subscription")
    assert resources.http_endpoints == {}


def test_resiliency_documents_are_kept_with_their_file(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", COMPONENT.format(kind="Resiliency", name="r"))

    resources = load_resources([str(tmp_path)], None, "app")

    assert [doc["metadata"]["name"] for doc in resources.resiliency] == ["r"]
    assert resources.resiliency[0]["source"] == str(path)
    assert resources.skipped_kinds == ()


# --- errors ------------------------------------------------------------------------


def _endpoint_error(extra: str = "", name: str = "ep", base_url: str = "http://h.test") -> str:
    return endpoint_yaml(name, base_url, extra)


_ERROR_CASES = [
    # (files, fragments that must appear; "{res}" is the resources folder)
    pytest.param(
        {"a.yaml": "kind: HTTPEndpoint\nmetadata:\n  name: [a\nspec: {}\n"},
        ["{res}/a.yaml", "invalid YAML", "line 4"],
        id="malformed-yaml",
    ),
    pytest.param(
        {"a.yaml": "- just\n- a list\n"},
        ["{res}/a.yaml", "document 1", "mapping", "list"],
        id="document-is-list",
    ),
    pytest.param(
        {"a.yaml": "just text\n"},
        ["{res}/a.yaml", "document 1", "mapping", "str"],
        id="document-is-scalar",
    ),
    pytest.param(
        {"a.yaml": "metadata:\n  name: x\n"},
        ["{res}/a.yaml", "document 1", "'kind'"],
        id="kind-missing",
    ),
    pytest.param(
        {"a.yaml": "kind: 5\nmetadata:\n  name: x\n"},
        ["{res}/a.yaml", "document 1", "'kind'"],
        id="kind-not-string",
    ),
    pytest.param(
        {"a.yaml": "kind: Component\n"},
        ["{res}/a.yaml", "document 1", "'metadata'"],
        id="metadata-missing",
    ),
    pytest.param(
        {"a.yaml": "kind: Component\nmetadata:\n  namespace: x\n"},
        ["{res}/a.yaml", "document 1", "'metadata.name'"],
        id="name-missing",
    ),
    pytest.param(
        {"a.yaml": "kind: Component\nmetadata:\n  name: 12\n"},
        ["{res}/a.yaml", "document 1", "'metadata.name'"],
        id="name-not-string",
    ),
    pytest.param(
        {"a.yaml": "---\n---\n" + COMPONENT.format(kind="Component", name="c") + "---\n- x\n"},
        ["{res}/a.yaml", "document 3", "mapping"],
        id="error-names-document-position",
    ),
    pytest.param(
        {"a.yaml": "kind: HTTPEndpoint\nmetadata:\n  name: ep\n"},
        ["{res}/a.yaml", "document 1", "'ep'", "'spec'"],
        id="endpoint-spec-missing",
    ),
    pytest.param(
        {"a.yaml": "kind: HTTPEndpoint\nmetadata:\n  name: ep\nspec:\n  headers: []\n"},
        ["{res}/a.yaml", "document 1", "baseUrl", "required"],
        id="base-url-missing",
    ),
    pytest.param(
        {"a.yaml": _endpoint_error(base_url="42")},
        ["{res}/a.yaml", "baseUrl", "required"],
        id="base-url-not-string",
    ),
    pytest.param(
        {"a.yaml": _endpoint_error(base_url="ftp://h.test")},
        ["{res}/a.yaml", "'ftp://h.test'", "http:// or https://"],
        id="base-url-wrong-scheme",
    ),
    pytest.param(
        {"a.yaml": _endpoint_error(base_url="h.test")},
        ["{res}/a.yaml", "'h.test'", "http:// or https://"],
        id="base-url-without-scheme",
    ),
    pytest.param(
        {"a.yaml": _endpoint_error(base_url="https://")},
        ["{res}/a.yaml", "'https://'", "no host"],
        id="base-url-without-host",
    ),
    pytest.param(
        {"a.yaml": _endpoint_error(base_url="http://h.test:99999")},
        ["{res}/a.yaml", "'http://h.test:99999'", "not a valid URL"],
        id="base-url-bad-port",
    ),
    pytest.param(
        {"a.yaml": _endpoint_error("headers: {a: b}\n")},
        ["{res}/a.yaml", "spec.headers must be a list"],
        id="headers-not-list",
    ),
    pytest.param(
        {"a.yaml": _endpoint_error("headers: [x]\n")},
        ["{res}/a.yaml", "spec.headers[1]", "mapping"],
        id="header-not-mapping",
    ),
    pytest.param(
        {"a.yaml": _endpoint_error("headers:\n- value: v\n")},
        ["{res}/a.yaml", "spec.headers[1]", "'name'"],
        id="header-name-missing",
    ),
    pytest.param(
        {"a.yaml": _endpoint_error("headers:\n- name: Bad Name\n  value: v\n")},
        ["{res}/a.yaml", "spec.headers[1]", "valid header name"],
        id="header-name-invalid",
    ),
    pytest.param(
        {"a.yaml": _endpoint_error("headers:\n- name: A\n  value: a\n- name: X-Only\n")},
        ["{res}/a.yaml", "spec.headers[2] (X-Only)", "'value'"],
        id="header-value-missing",
    ),
    pytest.param(
        {"a.yaml": _endpoint_error("headers:\n- name: X-Map\n  value: {a: 1}\n")},
        ["{res}/a.yaml", "(X-Map)", "'value'"],
        id="header-value-mapping",
    ),
    pytest.param(
        {"a.yaml": _endpoint_error('headers:\n- name: X-Crlf\n  value: "a\\r\\nInjected: 1"\n')},
        ["{res}/a.yaml", "(X-Crlf)", "line breaks"],
        id="header-value-crlf",
    ),
    pytest.param(
        {
            "a.yaml": _endpoint_error(
                "headers:\n- name: Authorization\n  secretKeyRef:\n    name: s\n    key: k\n"
            )
        },
        ["{res}/a.yaml", "Authorization", "secretKeyRef", "secret stores"],
        id="header-secret-key-ref",
    ),
    pytest.param(
        {"a.yaml": _endpoint_error("clientTLS: [x]\n", base_url="https://h.test")},
        ["{res}/a.yaml", "clientTLS must be a mapping"],
        id="client-tls-not-mapping",
    ),
    pytest.param(
        {
            "a.yaml": _endpoint_error(
                "clientTLS:\n  rootCA:\n    secretKeyRef: {name: s, key: ca}\n",
                base_url="https://h.test",
            )
        },
        ["{res}/a.yaml", "clientTLS.rootCA", "secretKeyRef", "secret stores"],
        id="root-ca-secret-key-ref",
    ),
    pytest.param(
        {
            "a.yaml": _endpoint_error(
                "clientTLS:\n  certificate:\n    secretKeyRef: {name: s, key: crt}\n"
                f"  privateKey: {pem_block(KEY, 4)}",
                base_url="https://h.test",
            )
        },
        ["{res}/a.yaml", "clientTLS.certificate", "secret stores"],
        id="certificate-secret-key-ref",
    ),
    pytest.param(
        {
            "a.yaml": _endpoint_error(
                f"clientTLS:\n  certificate: {pem_block(CERT, 4)}"
                "  privateKey:\n    secretKeyRef: {name: s, key: key}\n",
                base_url="https://h.test",
            )
        },
        ["{res}/a.yaml", "clientTLS.privateKey", "secret stores"],
        id="private-key-secret-key-ref",
    ),
    pytest.param(
        {
            "a.yaml": _endpoint_error(
                f"clientTLS:\n  certificate: {pem_block(CERT, 4)}", base_url="https://h.test"
            )
        },
        ["{res}/a.yaml", "certificate and privateKey must be set together"],
        id="certificate-without-key",
    ),
    pytest.param(
        {
            "a.yaml": _endpoint_error(
                f"clientTLS:\n  privateKey: {pem_block(KEY, 4)}", base_url="https://h.test"
            )
        },
        ["{res}/a.yaml", "certificate and privateKey must be set together"],
        id="key-without-certificate",
    ),
    pytest.param(
        {
            "a.yaml": _endpoint_error(
                "clientTLS:\n  rootCA:\n    value: not a pem\n", base_url="https://h.test"
            )
        },
        ["{res}/a.yaml", "clientTLS.rootCA", "PEM"],
        id="root-ca-not-pem",
    ),
    pytest.param(
        {"a.yaml": _endpoint_error(f"clientTLS:\n  rootCA: {pem_block(CA, 4)}")},
        ["{res}/a.yaml", "clientTLS", "plain http"],
        id="client-tls-on-http",
    ),
    pytest.param(
        {"a.yaml": _endpoint_error(name="a/b")},
        ["{res}/a.yaml", "'a/b'", "'/'"],
        id="name-with-slash",
    ),
    pytest.param(
        {"a.yaml": _endpoint_error(name='"a b"')},
        ["{res}/a.yaml", "'a b'", "whitespace"],
        id="name-with-space",
    ),
    pytest.param(
        {"a.yaml": _endpoint_error(name='"a%2Fb"')},
        ["{res}/a.yaml", "'a%2Fb'", "'%'"],
        id="name-with-percent",
    ),
    pytest.param(
        {"a.yaml": _endpoint_error(name='"HTTPS:x"')},
        ["{res}/a.yaml", "'HTTPS:x'", "URL"],
        id="name-like-url",
    ),
    pytest.param(
        {"a.yaml": "scopes: app\n" + _endpoint_error()},
        ["{res}/a.yaml", "'scopes' must be a list"],
        id="scopes-not-list",
    ),
    pytest.param(
        {"a.yaml": _endpoint_error().replace("dapr.io/v1alpha1", "dapr.io/v2")},
        ["{res}/a.yaml", "apiVersion", "dapr.io/v1alpha1"],
        id="endpoint-wrong-api-version",
    ),
    pytest.param(
        {"a.yaml": "kind: Configuration\nmetadata:\n  name: c\nspec: [1]\n"},
        ["{res}/a.yaml", "Configuration 'c'", "'spec' must be a mapping"],
        id="configuration-spec-not-mapping",
    ),
    pytest.param(
        {
            "a.yaml": CONFIGURATION.format(name="one", rate="1"),
            "b.yaml": CONFIGURATION.format(name="two", rate="1"),
        },
        ["{res}/a.yaml", "{res}/b.yaml", "second Configuration"],
        id="two-configurations",
    ),
    pytest.param(
        {"a.yaml": _endpoint_error(name="dup"), "b.yaml": _endpoint_error(name="dup")},
        ["{res}/a.yaml", "{res}/b.yaml", "'dup'", "defined twice"],
        id="duplicate-endpoint-across-files",
    ),
    pytest.param(
        {"a.yaml": _endpoint_error(name="dup") + "---\n" + _endpoint_error(name="dup")},
        ["{res}/a.yaml", "document 2", "'dup'", "defined twice"],
        id="duplicate-endpoint-same-file",
    ),
]


@pytest.mark.parametrize(("files", "fragments"), _ERROR_CASES)
def test_bad_resources_raise_naming_file(
    tmp_path: Path, files: dict[str, str], fragments: list[str]
) -> None:
    res = tmp_path / "res"
    for name, text in files.items():
        write(res, name, text)

    with pytest.raises(ConfigError) as caught:
        load_resources([str(res)], None, "app")

    message = str(caught.value)
    for fragment in fragments:
        assert fragment.format(res=res) in message


def test_missing_resources_path_is_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")

    with pytest.raises(ConfigError, match="does not exist") as caught:
        load_resources([missing], None, "app")

    assert missing in str(caught.value)


def test_undecodable_file_is_named(tmp_path: Path) -> None:
    file = tmp_path / "bin.yaml"
    file.write_bytes(b"kind: \xff\xfe\n")

    with pytest.raises(ConfigError, match="cannot read") as caught:
        load_resources([str(tmp_path)], None, "app")

    assert str(file) in str(caught.value)


@pytest.mark.parametrize(
    ("config_text", "fragments"),
    [
        pytest.param(None, ["does not exist"], id="missing"),
        pytest.param(COMPONENT.format(kind="Component", name="c"), ["no document"], id="no-config"),
        pytest.param("", ["no document"], id="empty-file"),
        pytest.param("kind: [x\n", ["invalid YAML", "line 2"], id="malformed"),
        pytest.param(
            CONFIGURATION.format(name="a", rate="1")
            + "---\n"
            + CONFIGURATION.format(name="b", rate="1"),
            ["document 2", "second Configuration"],
            id="two-configurations",
        ),
    ],
)
def test_bad_config_file_is_named(
    tmp_path: Path, config_text: str | None, fragments: list[str]
) -> None:
    config = tmp_path / "config.yaml"
    if config_text is not None:
        config.write_text(config_text, encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_resources([], str(config), "app")

    message = str(caught.value)
    assert str(config) in message
    for fragment in fragments:
        assert fragment in message


def test_config_file_that_is_a_folder_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a file") as caught:
        load_resources([], str(tmp_path), "app")

    assert str(tmp_path) in str(caught.value)
