"""The Prometheus alerting rules and the Grafana dashboard in monitoring/: promtool checks them
(and runs the rules' unit tests) where Debian's `prometheus` package provides it, the structure
is checked here either way, and every metric they query is on a real server's /metrics."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
import pytest
import yaml

from detserve.protos import detection_pb2 as pb
from detserve.protos import detection_pb2_grpc as pb_grpc
from detserve.server.alerts_config import AlertsConfig
from detserve.server.app import start_server
from detserve.server.batcher import BatchingConfig
from detserve.server.cameras import CAMERA_KEY
from detserve.server.config import ModelConfig, ServerConfig

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
RULES = MONITORING / "prometheus" / "detserve-alerts.yml"
RULE_TESTS = MONITORING / "prometheus" / "detserve-alerts.test.yml"
DASHBOARD = MONITORING / "grafana" / "detserve-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed "
                                    "(Debian: apt-get install prometheus)")
METRIC = re.compile(r"\bdetserve_[a-z0-9_]+\b")
# Grafana's variables, as Prometheus would see them once Grafana filled them in.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$model": ".*"}
# PromQL functions and keywords the files may use (the check without promtool).
KNOWN_WORDS = {"histogram_quantile", "sum", "max", "min", "avg", "rate", "increase", "by",
               "without", "and", "or", "unless", "on", "ignoring", "label_values"}
SEVERITIES = {"page", "warning", "info"}


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def dashboard_exprs() -> list[str]:
    exprs = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            exprs.append(expr)
    return exprs


def check_expr(expr: str) -> None:
    """A structural check of a PromQL expression: brackets balance, strings close, and every
    word before a "(" is a known function or keyword."""
    pairs, stack, quoted = {")": "(", "]": "[", "}": "{"}, [], False
    for ch in expr:
        if ch == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            assert stack and stack.pop() == pairs[ch], f"unbalanced {ch!r} in {expr!r}"
    assert not stack and not quoted, f"unclosed bracket or string in {expr!r}"
    words = set(re.findall(r"([a-z_]+)\s*\(", re.sub(r'"[^"]*"', '""', expr)))
    assert words <= KNOWN_WORDS, f"unknown function(s) {words - KNOWN_WORDS} in {expr!r}"
    assert METRIC.search(expr), f"no detserve metric in {expr!r}"


def test_rules_have_what_an_operator_needs() -> None:
    found = rules()
    names = {r["alert"] for r in found}
    assert {"DetserveDeadCamera", "DetserveDistributionShift", "DetserveHighP99Latency",
            "DetserveHighRejectionRate", "DetserveQueueWait"} <= names
    for rule in found:
        check_expr(rule["expr"])
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 80


def test_dashboard_panels_cover_the_issue_and_query_detserve_metrics() -> None:
    board = dashboard()
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    titles = " | ".join(p["title"] for p in panels)
    for needed in ("latency p50 / p95 / p99", "Batch size", "Queue wait vs compute",
                   "Detections per frame", "Max score per frame", "Dead cameras",
                   "Distribution shift"):
        assert needed in titles
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "model"}
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"
        for key in ("x", "y", "w", "h"):
            assert isinstance(panel["gridPos"][key], int)
    for expr in dashboard_exprs():
        check_expr(expr)
    latency = [e for e in dashboard_exprs() if "detserve_request_latency_seconds_bucket" in e]
    assert {q for e in latency for q in re.findall(r"histogram_quantile\(([\d.]+)", e)} == \
        {"0.5", "0.95", "0.99"}


@needs_promtool
def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    assert PROMTOOL is not None
    checked = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True,
                             text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout
    tested = subprocess.run([PROMTOOL, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                            capture_output=True, text=True, check=False)
    assert tested.returncode == 0, tested.stdout + tested.stderr


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each query as a recording rule: `promtool check rules` runs Prometheus's own parser."""
    assert PROMTOOL is not None
    exprs = dashboard_exprs()
    doc = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"detserve:dashboard_query_{k}", "expr": e} for k, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(doc))
    checked = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True,
                             text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in checked.stdout


# -- every queried metric on a real server

# Counters that only move on an event this test does not cause; their family is still exposed.
EVENT_ONLY = {"detserve_stream_dropped_frames_total"}


def exposed(text: str) -> tuple[set[str], set[str]]:
    """(names with a sample, names declared by a # TYPE line) in a /metrics text."""
    samples = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
               if line and not line.startswith("#")}
    declared = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    return samples, declared


@pytest.fixture
def queried() -> Iterator[set[str]]:
    names = {n for r in rules() for n in METRIC.findall(r["expr"])}
    names |= {n for e in dashboard_exprs() for n in METRIC.findall(e)}
    for var in dashboard()["templating"]["list"]:
        names |= set(METRIC.findall(var.get("definition", "")))
    yield names


async def _traffic(port: int) -> None:
    """Unary calls with and without a camera, a stream (its frames take rate-limit tokens too,
    and wait for one), then calls until the rate limit refuses one."""
    image = np.zeros((64, 64, 3), np.uint8)  # two blocks the blocks model finds
    image[:32, :32, 0] = image[32:, 32:, 1] = 255
    request = pb.DetectRequest(image=pb.Image(encoded=cv2.imencode(".png", image)[1].tobytes()))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DetectorStub(channel)  # type: ignore[no-untyped-call]
        for k in range(12):
            await stub.Detect(request, metadata=((CAMERA_KEY, "cam-1"),) if k % 2 else ())

        async def frames() -> Any:
            for k in range(12):
                yield pb.DetectRequest(frame_id=k, image=request.image)

        replies = [r async for r in stub.DetectStream(frames())]
        assert all(r.status.code == 0 for r in replies)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            for _ in range(40):
                await stub.Detect(request)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_every_metric_the_rules_and_dashboard_query_is_on_a_real_servers_metrics(
        tiny_package: Path, queried: set[str]) -> None:
    model = ModelConfig(package=tiny_package, engine_options={"intra_op_threads": 1},
                        batching=BatchingConfig(max_batch_size=4, max_queue_delay_s=0.0))
    config = ServerConfig(
        host="127.0.0.1", port=0, metrics_port=0, models=(model,), log_requests=False,
        rate_limit_rps=0.001, rate_limit_burst=40,  # 40 calls or frames, then refusals
        alerts=AlertsConfig(shift_warmup_frames=10, shift_window_frames=10, shift_min_frames=10))
    server = await start_server(config)
    try:
        await _traffic(server.port)
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read().decode())
    finally:
        await server.stop(grace_s=1.0)
    samples, declared = exposed(text)
    assert len(queried) >= 15
    missing = sorted(n for n in queried - EVENT_ONLY if n not in samples)
    assert not missing, f"queried but not on /metrics: {missing}"
    assert declared >= EVENT_ONLY
