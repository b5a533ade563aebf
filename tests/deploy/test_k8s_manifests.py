"""deploy/k8s checked offline: Kubernetes' own schemas (kubernetes-validate, strict), the
server's config parser on the ConfigMap, and the cross-file rules a schema cannot see (probe
ports, grace period against drain_grace_s, the HPA's metric built from series a real server
exports)."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from detserve.protos import detection_pb2 as pb
from detserve.protos import detection_pb2_grpc as pb_grpc
from detserve.server.app import SERVICE_NAME, start_server
from detserve.server.config import ModelConfig, ServerConfig, parse_config

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate (the dev extra) is not installed")

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KUBERNETES_VERSION = "1.32.0"
MARGIN_S = 5  # the engine's close after the drain, before SIGKILL


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _by_kind() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in _docs(path.name):
            found[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return found


def _container() -> dict[str, Any]:
    spec = _by_kind()["Deployment/detserve"]["spec"]["template"]["spec"]
    containers: list[dict[str, Any]] = spec["containers"]
    assert len(containers) == 1
    return containers[0]


def _server_config() -> ServerConfig:
    raw = yaml.safe_load(_by_kind()["ConfigMap/detserve-config"]["data"]["config.yaml"])
    return parse_config(raw, K8S)


def _adapter_rule() -> dict[str, Any]:
    rules = yaml.safe_load(_by_kind()["ConfigMap/prometheus-adapter"]["data"]["config.yaml"])
    assert len(rules["rules"]) == 1
    rule: dict[str, Any] = rules["rules"][0]
    return rule


@pytest.mark.parametrize("name", sorted(p.name for p in K8S.glob("*.yaml")
                                        if p.name != "kustomization.yaml"))
def test_manifest_passes_the_kubernetes_schema(name: str) -> None:
    for doc in _docs(name):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_refuses_a_misspelt_field() -> None:
    doc = _by_kind()["Deployment/detserve"]
    broken = {**doc, "spec": {**doc["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(_docs("kustomization.yaml")[0]["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_probes_are_grpc_health_on_the_served_port() -> None:
    container = _container()
    config = _server_config()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": config.port, "metrics": config.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == config.port, probe
    assert container["readinessProbe"]["grpc"]["service"] == SERVICE_NAME
    assert container["livenessProbe"]["grpc"]["service"] == ""


def test_grace_period_covers_prestop_and_the_drain() -> None:
    container = _container()
    spec = _by_kind()["Deployment/detserve"]["spec"]["template"]["spec"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = float(command[1])
    drain_s = _server_config().drain_grace_s
    assert spec["terminationGracePeriodSeconds"] >= pre_stop_s + drain_s + MARGIN_S
    liveness = container["livenessProbe"]
    # Drain turns overall health NOT_SERVING: liveness must not restart a draining pod.
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > drain_s


def test_connection_age_is_on_so_clients_re_resolve() -> None:
    config = _server_config()
    assert config.max_connection_age_s > 0
    assert config.max_connection_age_grace_s <= config.drain_grace_s + 10


def test_headless_service_selects_the_pods_and_targets_the_grpc_port() -> None:
    kinds = _by_kind()
    service = kinds["Service/detserve-headless"]["spec"]
    pod_labels = kinds["Deployment/detserve"]["spec"]["template"]["metadata"]["labels"]
    assert service["clusterIP"] == "None"
    assert service["selector"].items() <= pod_labels.items()
    assert {p["name"]: p["targetPort"] for p in service["ports"]}["grpc"] == "grpc"
    pdb = kinds["PodDisruptionBudget/detserve"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()


def test_hpa_scales_the_deployment_on_the_adapter_metric() -> None:
    hpa = _by_kind()["HorizontalPodAutoscaler/detserve"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": "detserve"}
    (metric,) = hpa["metrics"]
    assert metric["pods"]["metric"]["name"] == _adapter_rule()["name"]["as"]


def _series_names(rule: dict[str, Any]) -> set[str]:
    text = rule["seriesQuery"] + " " + rule["metricsQuery"]
    return set(re.findall(r"\b(detserve_[a-z_]+)\{", text))


async def test_adapter_rule_reads_series_a_real_server_exports(tiny_package: Path) -> None:
    names = _series_names(_adapter_rule())
    assert names == {"detserve_queue_seconds_sum", "detserve_compute_seconds_sum"}
    config = ServerConfig(host="127.0.0.1", port=0, metrics_port=0,
                          models=(ModelConfig(package=tiny_package,
                                              engine_options={"intra_op_threads": 1}),))
    server = await start_server(replace(config, log_requests=False))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.DetectorStub(channel)  # type: ignore[no-untyped-call]
            image = pb.Image(raw=pb.RawFrame(data=b"\0" * 64 * 64 * 3, width=64, height=64,
                                             pixel_format=pb.PIXEL_FORMAT_RGB8))
            await stub.Detect(pb.DetectRequest(image=image), timeout=10)
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
    finally:
        await server.stop(grace_s=1.0)
    exported = set(re.findall(r"^(detserve_[a-z_]+)\{", body.decode(), re.MULTILINE))
    assert names <= exported, sorted(names - exported)
