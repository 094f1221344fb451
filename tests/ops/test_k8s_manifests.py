"""The rendered kustomize trees (base, dev, prod) validated offline: built-in kinds against the
Kubernetes OpenAPI schemas (kubernetes-validate, strict), CRD kinds against k8s/schemas/,
plus the properties the deployment relies on."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from services.config import load_config
from tests.ops.k8s import K8S, RULES_FILE, TREES, Resource, named, of_kind, render
from tests.support.ci import skip_or_fail

# The oldest Kubernetes release still in common managed offerings, and a current one.
KUBERNETES_VERSIONS = ("1.29.0", "1.33.0")
SERVICES = ("receiver", "compliance", "qc", "harmonize", "registry")
CONSUMERS = ("compliance", "qc", "harmonize", "registry")
CRD_SCHEMAS = {
    path.stem: json.loads(path.read_text()) for path in (K8S / "schemas").glob("*.json")
}


def _crd_schema(resource: Resource) -> dict[str, Any] | None:
    key = f"{resource['apiVersion'].replace('/', '-')}-{resource['kind']}"
    return CRD_SCHEMAS.get(key)


@pytest.mark.parametrize("tree", TREES)
def test_every_manifest_validates_offline(tree: str) -> None:
    resources = render(tree)
    assert resources
    for resource in resources:
        schema = _crd_schema(resource)
        if schema is not None:
            jsonschema.validate(resource, schema)
            continue
        assert "." not in resource["apiVersion"].split("/")[0] or resource["apiVersion"].startswith(
            ("apps/", "policy/", "networking.k8s.io/", "rbac.authorization.k8s.io/")
        ), f"no schema for {resource['apiVersion']} {resource['kind']}: add one to k8s/schemas/"
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(resource, version, strict=True)


def test_crd_schemas_refuse_a_typo() -> None:
    [scaled] = [r for r in render("base") if r["kind"] == "ScaledObject"][:1]
    schema = _crd_schema(scaled)
    assert schema is not None
    scaled["spec"]["maxReplicas"] = 3  # KEDA calls it maxReplicaCount
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, schema)
    del scaled["spec"]["maxReplicas"]
    del scaled["spec"]["triggers"][0]["metadata"]["queueName"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, schema)


def test_kubernetes_schemas_refuse_a_typo() -> None:
    deployment = named(render("base"), "Deployment", "harmonet-qc")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("tree", TREES)
def test_deployments_are_hardened_probed_and_bounded(tree: str) -> None:
    deployments = {d["metadata"]["name"]: d for d in of_kind(render(tree), "Deployment")}
    for service in SERVICES:
        pod = deployments[f"harmonet-{service}"]["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert container["args"] == [service]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["automountServiceAccountToken"] is False
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        for kind in ("requests", "limits"):
            assert set(container["resources"][kind]) == {"cpu", "memory"}
        # liveness is the process only (never the broker or the database)
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        port = "http" if service == "registry" else "metrics"
        assert container["livenessProbe"]["httpGet"]["port"] == port
        assert {"name": "metrics", "containerPort": 9100, "protocol": "TCP"} in container["ports"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts == {"/data": "data", "/etc/harmonet": "config", "/tmp": "tmp"}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "harmonet-data"


@pytest.mark.parametrize("tree", TREES)
def test_references_resolve(tree: str) -> None:
    resources = render(tree)
    names = {(r["kind"], r["metadata"]["name"]) for r in resources}
    for deployment in of_kind(resources, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim",
                        volume["persistentVolumeClaim"]["claimName"]) in names
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert ("ConfigMap", source["configMapRef"]["name"]) in names
                elif source["secretRef"]["name"] != "harmonet-secrets" or tree == "overlays/dev":
                    # prod creates harmonet-secrets out of band (docs/deploying.md)
                    assert ("Secret", source["secretRef"]["name"]) in names
    templates = [d["spec"]["template"]["metadata"]["labels"] for d in of_kind(resources,
                                                                              "Deployment")]
    for service in of_kind(resources, "Service"):
        selector = service["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in templates), service
    for budget in of_kind(resources, "PodDisruptionBudget"):
        selector = budget["spec"]["selector"]["matchLabels"]
        assert any(selector.items() <= labels.items() for labels in templates), budget


@pytest.mark.parametrize("tree", ["base", "overlays/prod"])
def test_keda_scales_every_consumer_on_its_queue(tree: str) -> None:
    resources = render(tree)
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in of_kind(resources, "ScaledObject")}
    assert set(scaled) == {f"harmonet-{name}" for name in CONSUMERS}
    for name in CONSUMERS:
        [trigger] = scaled[f"harmonet-{name}"]["spec"]["triggers"]
        assert trigger["type"] == "rabbitmq"
        assert trigger["metadata"]["queueName"] == f"harmonet.{name}"  # services/bus/rabbitmq.py
        deployment = named(resources, "Deployment", f"harmonet-{name}")
        env_sources = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        assert {"secretRef": {"name": "harmonet-secrets"}} in env_sources  # HARMONET_AMQP_URL


def test_network_policies_deny_by_default_and_open_the_service_ports() -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind(render("base"), "NetworkPolicy")}
    deny = policies["harmonet-default-deny"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    opened = {(p["podSelector"]["matchLabels"].get("app.kubernetes.io/component"), port["port"])
              for p in policies.values() for rule in p.get("ingress", [])
              for port in rule.get("ports", [])}
    assert opened == {("receiver", 11112), ("registry", 8000), (None, 9100)}
    egress_ports = {port["port"] for rule in policies["harmonet-egress"]["egress"]
                    for port in rule["ports"]}
    assert egress_ports == {53, 5671, 5672, 6379, 6380, 5432}


def test_overlays_differ_where_they_should() -> None:
    dev, prod = render("overlays/dev"), render("overlays/prod")
    assert {r["metadata"]["namespace"] for r in dev if r["kind"] != "Namespace"} == {
        "harmonet-dev"}
    assert {r["metadata"]["namespace"] for r in prod} == {"harmonet"}
    assert not [r for r in dev if r["kind"] in ("ScaledObject", "PrometheusRule",
                                                "ServiceMonitor")]
    for name in ("rabbitmq", "redis", "postgres", "prometheus", "grafana"):
        named(dev, "Deployment", name)
        assert not [d for d in of_kind(prod, "Deployment") if d["metadata"]["name"] == name]
    assert all(d["spec"]["replicas"] == 1 for d in of_kind(dev, "Deployment"))
    replicas = {d["metadata"]["name"]: d["spec"]["replicas"] for d in of_kind(prod, "Deployment")}
    assert replicas == {"harmonet-receiver": 3, "harmonet-registry": 2, "harmonet-compliance": 2,
                        "harmonet-qc": 2, "harmonet-harmonize": 2}
    receiver = named(prod, "Service", "harmonet-receiver")["spec"]
    assert receiver["type"] == "LoadBalancer" and receiver["externalTrafficPolicy"] == "Local"
    assert not list(of_kind(prod, "Secret"))  # no credentials in the repository for prod
    secret = named(dev, "Secret", "harmonet-secrets")
    assert {"HARMONET_AMQP_URL", "HARMONET_REDIS_URL", "HARMONET_DATABASE_URL",
            "HARMONET_PSEUDONYM_KEY"} <= set(secret["data"])


def test_configuration_and_rules_configmaps_carry_the_files(tmp_path: Path) -> None:
    base = render("base")
    config = named(base, "ConfigMap", "harmonet-config")["data"]["harmonet.yaml"]
    (tmp_path / "harmonet.yaml").write_text(config)
    assert load_config(tmp_path / "harmonet.yaml").sites  # what `harmonet config check` runs
    rules = named(base, "ConfigMap", "harmonet-prometheus-rules")["data"]["harmonet.rules.yml"]
    assert rules == RULES_FILE.read_text()
    rule = named(base, "PrometheusRule", "harmonet")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES_FILE.read_text())["groups"]
    dashboards = named(base, "ConfigMap", "harmonet-grafana-dashboards")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(dashboards["data"]) == {p.name for p in (K8S / "base" / "dashboards").glob("*.json")}


def test_settings_configmap_is_accepted_by_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.settings import Settings

    settings = named(render("base"), "ConfigMap", "harmonet-settings")["data"]
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    parsed = Settings()
    assert (parsed.data_dir, parsed.metrics_port, parsed.dicom_port) == (Path("/data"), 9100, 11112)


def test_dev_prometheus_configuration_passes_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("promtool not installed (apt-get install prometheus)")
    assert promtool is not None
    config = yaml.safe_load(
        named(render("overlays/dev"), "ConfigMap", "prometheus-config")["data"]["prometheus.yml"])
    # Debian builds Prometheus without Kubernetes service discovery; check the rest of the
    # configuration (relabelling, rule globs) with the discovery swapped for a file.
    for job in config["scrape_configs"]:
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["file_sd_configs"] = [{"files": [str(tmp_path / "targets.json")]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    checked = subprocess.run([promtool, "check", "config", "--syntax-only",
                              str(tmp_path / "prometheus.yml")],
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
