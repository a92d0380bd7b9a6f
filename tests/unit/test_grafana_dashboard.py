"""The committed Grafana dashboard and Prometheus config match the metrics in multimodal/metrics.py.

Pure file checks: no Ray, no Prometheus, no S3. Metric names are parsed out of the source of
``multimodal/metrics.py`` (its ``Gauge(``/``Counter(`` calls), so nothing there is imported.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "cluster" / "grafana" / "slm_training_dashboard.json"
PROMETHEUS_YML = ROOT / "cluster" / "grafana" / "prometheus.yml"
METRICS_PY = ROOT / "multimodal" / "metrics.py"

DEFINITION = re.compile(r"\b(Gauge|Counter|Histogram)\(\s*[\"']([A-Za-z_][A-Za-z0-9_]*)[\"']")
# A metric name in PromQL is followed by a selector, a range, an offset or the end of the
# expression/closing bracket; `ray_slm_\w+` never matches a label name or a function.
REFERENCE = re.compile(r"\bray_(slm_[A-Za-z0-9_]*)")


def _defined_metrics() -> dict[str, str]:
    """{name: kind} for every ray.util.metrics object created in multimodal/metrics.py."""
    found = {name: kind for kind, name in DEFINITION.findall(METRICS_PY.read_text())}
    assert found, "no Gauge(/Counter( calls found in multimodal/metrics.py"
    return found


def _exported_names(defined: dict[str, str]) -> dict[str, str]:
    """Prometheus name (after Ray's ray_ prefix, counters with _total) -> Ray metric name."""
    out = {}
    for name, kind in defined.items():
        if kind == "Counter":
            out[f"ray_{name}_total"] = name
        elif kind == "Histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                out[f"ray_{name}{suffix}"] = name
        else:
            out[f"ray_{name}"] = name
    return out


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict) -> list[dict]:
    """All panels, including those nested in collapsed rows."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _exprs(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", []) if "expr" in t]
    for var in dashboard["templating"]["list"]:
        if var.get("type") == "query":
            query = var["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def test_metrics_file_defines_the_expected_metrics():
    defined = _defined_metrics()
    assert defined == {
        "slm_train_loss": "Gauge", "slm_val_loss": "Gauge", "slm_learning_rate": "Gauge",
        "slm_tokens_per_second": "Gauge", "slm_step": "Gauge", "slm_data_wait_fraction": "Gauge",
        "slm_gpu_utilization": "Gauge", "slm_samples": "Counter", "slm_bad_samples": "Counter",
    }


def test_dashboard_top_level(dashboard):
    assert dashboard["uid"] == "slm-training"
    assert dashboard["title"] == "SLM training"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert "id" not in dashboard or dashboard["id"] is None  # importable into any Grafana


def test_dashboard_variables(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    run = variables["run"]
    assert run["type"] == "query"
    query = run["query"]["query"] if isinstance(run["query"], dict) else run["query"]
    assert query == "label_values(ray_slm_step, run)"
    assert run["datasource"]["uid"] == "${datasource}"


def test_panels_structure(dashboard):
    panels = [p for p in _panels(dashboard) if p.get("type") != "row"]
    assert len(panels) >= 9
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for p in panels:
        assert p.get("title"), p
        grid = p["gridPos"]
        assert {"x", "y", "w", "h"} <= grid.keys(), p["title"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, p["title"]
        assert p["targets"], f"{p['title']}: no targets"
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["refId"], p["title"]
            assert t.get("datasource", p["datasource"])["uid"] == "${datasource}", p["title"]
            assert 'run=~"$run"' in t["expr"], f"{p['title']}: not filtered by $run"
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), p["title"]


def test_panels_do_not_overlap(dashboard):
    cells = set()
    for p in _panels(dashboard):
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine


def test_every_referenced_metric_is_defined(dashboard):
    defined = _defined_metrics()
    exported = _exported_names(defined)
    for expr in _exprs(dashboard):
        for match in REFERENCE.finditer(expr):
            full = "ray_" + match.group(1)
            assert full in exported, f"{full!r} in {expr!r} is not a metric from multimodal/metrics.py"


def test_counters_are_referenced_with_total_and_gauges_without(dashboard):
    defined = _defined_metrics()
    text = "\n".join(_exprs(dashboard))
    for name, kind in defined.items():
        if kind == "Counter":
            assert re.search(rf"\bray_{name}_total\b", text), f"counter {name} not on the dashboard"
            assert not re.search(rf"\bray_{name}\b(?!_total)", text), f"counter {name} without _total"
        elif kind == "Gauge":
            assert re.search(rf"\bray_{name}\b(?!_)", text), f"gauge {name} not on the dashboard"


def test_counters_use_rate_per_modality(dashboard):
    text = "\n".join(_exprs(dashboard))
    assert 'sum by (modality) (rate(ray_slm_samples_total{run=~"$run"}[1m]))' in text
    assert re.search(r"rate\(ray_slm_bad_samples_total\{", text)
    assert re.search(r"sum by \(modality\) \(ray_slm_bad_samples_total\{", text)


def test_prometheus_config_scrapes_ray_service_discovery():
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    jobs = config["scrape_configs"]
    sd_jobs = [j for j in jobs if j.get("file_sd_configs")]
    assert sd_jobs, "no file_sd_configs scrape job"
    files = [f for j in sd_jobs for sd in j["file_sd_configs"] for f in sd["files"]]
    assert any(f.endswith("prom_metrics_service_discovery.json") for f in files), files
    assert "web" not in config  # the listen address is a command-line flag, not config
