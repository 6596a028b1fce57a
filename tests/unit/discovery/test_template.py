"""DNS name templates: what they render, and every way a template or a value is refused."""

from __future__ import annotations

import pytest

from fastproxy.discovery.template import (
    NameTemplate,
    consul_template,
    is_dns_label,
    kubernetes_template,
)


@pytest.mark.parametrize(
    ("text", "cluster_domain", "app_id", "namespace", "expected"),
    [
        pytest.param(
            "{appid}-dapr.{namespace}.svc.{clusterDomain}",
            "cluster.local",
            "orders",
            "default",
            "orders-dapr.default.svc.cluster.local",
            id="kubernetes-shape",
        ),
        pytest.param(
            "{appid}-dapr.{namespace}.svc.{clusterDomain}",
            "k8s.example.org",
            "orders",
            "prod",
            "orders-dapr.prod.svc.k8s.example.org",
            id="custom-cluster-domain",
        ),
        pytest.param(
            "{appid}.service.consul",
            "cluster.local",
            "orders",
            "",
            "orders.service.consul",
            id="namespace-unused-may-be-empty",
        ),
        pytest.param(
            "_{appid}._tcp.{namespace}.example",
            "cluster.local",
            "orders",
            "ns1",
            "_orders._tcp.ns1.example",
            id="srv-service-proto",
        ),
        pytest.param(
            "service-{appid}.internal.",
            "cluster.local",
            "a1",
            "x",
            "service-a1.internal.",
            id="absolute-name-final-dot",
        ),
        pytest.param(
            "{appid}.test",
            "cluster.local",
            "1st-App",
            "x",
            "1st-App.test",
            id="leading-digit-and-upper-case",
        ),
        pytest.param(
            "{appid}.test",
            "cluster.local",
            "a" * 63,
            "x",
            "a" * 63 + ".test",
            id="longest-label",
        ),
    ],
)
def test_render(text: str, cluster_domain: str, app_id: str, namespace: str, expected: str) -> None:
    assert NameTemplate(text, cluster_domain).render(app_id, namespace) == expected


@pytest.mark.parametrize(
    ("text", "cluster_domain", "message"),
    [
        pytest.param("{appid}.{region}.example", "cluster.local", "{region}", id="unknown"),
        pytest.param("{appid}.{AppID}.example", "cluster.local", "{AppID}", id="case-matters"),
        pytest.param("{appid}.{}.example", "cluster.local", "{}", id="positional"),
        pytest.param("{appid}.{0}.example", "cluster.local", "{0}", id="indexed"),
        pytest.param("{appid.upper}.example", "cluster.local", "{appid.upper}", id="attribute"),
        pytest.param("{appid}.example:{port}", "cluster.local", "{port}", id="port"),
        pytest.param("{appid:>5}.example", "cluster.local", "format spec", id="format-spec"),
        pytest.param("{appid!r}.example", "cluster.local", "format spec", id="conversion"),
        pytest.param("{appid.example", "cluster.local", "{appid.example", id="unclosed-brace"),
        pytest.param("service.example", "cluster.local", "{appid}", id="no-appid"),
        pytest.param("{appid}..example", "cluster.local", "''", id="empty-label"),
        pytest.param("{appid}.exa mple", "cluster.local", "'exa mple'", id="space"),
        pytest.param("{{appid}}.example", "cluster.local", "{appid}", id="escaped-braces"),
        pytest.param("{appid}-." + "x" * 64, "cluster.local", "x" * 64, id="long-literal"),
        pytest.param("{appid}.svc.{clusterDomain}", "bad_.", "cluster domain", id="bad-domain"),
        pytest.param("{appid}.svc.{clusterDomain}", "", "cluster domain", id="empty-domain"),
    ],
)
def test_bad_template_refused_at_construction(text: str, cluster_domain: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        NameTemplate(text, cluster_domain)
    assert message in str(caught.value)


K8S = kubernetes_template()


@pytest.mark.parametrize(
    ("app_id", "namespace", "message"),
    [
        pytest.param("orders.evil", "default", "app id", id="dot-adds-a-label"),
        pytest.param("orders", "default.svc.other", "namespace", id="namespace-dot"),
        pytest.param("", "default", "app id", id="empty-app-id"),
        pytest.param("orders", "", "namespace", id="empty-namespace-when-used"),
        pytest.param("-orders", "default", "app id", id="leading-hyphen"),
        pytest.param("orders-", "default", "app id", id="trailing-hyphen"),
        pytest.param("order_s", "default", "app id", id="underscore"),
        pytest.param("orders app", "default", "app id", id="space"),
        pytest.param("orders\x00", "default", "app id", id="nul"),
        pytest.param("ordérs", "default", "app id", id="non-ascii"),
        pytest.param("{namespace}", "default", "app id", id="braces"),
        pytest.param("a" * 64, "default", "app id", id="label-too-long"),
        # 63 characters are a label, but "-dapr" then makes one too long for DNS.
        pytest.param("a" * 63, "default", "is not a valid DNS label", id="rendered-too-long"),
    ],
)
def test_render_refuses_values_that_are_not_one_label(
    app_id: str, namespace: str, message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        K8S.render(app_id, namespace)
    assert message in str(caught.value)


def test_whole_name_longer_than_dns_allows_is_refused() -> None:
    template = NameTemplate("{appid}." + ".".join(["x" * 60] * 3) + ".{namespace}")
    assert template.render("a", "b")
    with pytest.raises(ValueError, match="1 to 253"):
        template.render("a" * 63, "b" * 63)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("a", True, id="one-letter"),
        pytest.param("9", True, id="one-digit"),
        pytest.param("a-b", True, id="inner-hyphen"),
        pytest.param("a--b", True, id="double-hyphen"),
        pytest.param("a" * 63, True, id="63"),
        pytest.param("a" * 64, False, id="64"),
        pytest.param("", False, id="empty"),
        pytest.param("-a", False, id="leading-hyphen"),
        pytest.param("a.b", False, id="dot"),
        pytest.param("_a", False, id="underscore"),
        pytest.param("a\n", False, id="newline"),
    ],
)
def test_is_dns_label(value: str, expected: bool) -> None:
    assert is_dns_label(value) is expected


def test_kubernetes_template_matches_dapr_kubernetes_resolver() -> None:
    assert K8S.text == "{appid}-dapr.{namespace}.svc.{clusterDomain}"
    assert K8S.render("orders", "default") == "orders-dapr.default.svc.cluster.local"
    custom = kubernetes_template("corp.internal")
    assert custom.render("orders", "prod") == "orders-dapr.prod.svc.corp.internal"


def test_consul_template_ignores_the_namespace() -> None:
    template = consul_template()
    assert template.text == "{appid}.service.consul"
    assert not template.uses_namespace
    assert template.render("orders", "") == "orders.service.consul"


def test_templates_are_values() -> None:
    assert kubernetes_template() == kubernetes_template()
    assert kubernetes_template() != kubernetes_template("other.local")
    assert hash(consul_template()) == hash(consul_template())
    assert "service.consul" in repr(consul_template())
