"""The chart's alerts and dashboard, checked with Debian's promtool (scripts/promtool.sh):
`promtool check rules` on the rendered PrometheusRule, `promtool test rules` on
tests/chart/alerts.test.yaml (every alert fires on one input and stays silent on another),
and every PromQL expression of the dashboard parsed the same way."""

import json
import pathlib
import re
import shutil
import subprocess

import pytest
import yaml
from test_chart import one, render

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
JOB = "django-migrate-webhook"


@pytest.fixture(scope="module")
def promtool():
    result = subprocess.run(["bash", str(ROOT / "scripts" / "promtool.sh")], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"scripts/promtool.sh could not provide promtool: {result.stderr}")
    return result.stdout.strip()


def rules(values=None):
    docs = render({"metrics": {"prometheusRule": {"enabled": True, "job": JOB, **(values or {})}}})
    return one(docs, "PrometheusRule")


def alert_names(rule):
    return [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]


def run(promtool, *args, cwd):
    result = subprocess.run([promtool, *args], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_rules_are_off_by_default_and_named_for_the_release():
    assert not [d for d in render() if d["kind"] in ("PrometheusRule", "ConfigMap")]
    rule = one(render({"metrics": {"prometheusRule": {"enabled": True}}}), "PrometheusRule")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert all('job="dmw-django-migrate-webhook"' in e for e in exprs), exprs


def test_promtool_checks_the_rendered_rules(promtool, tmp_path):
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rules()["spec"]["groups"]}))
    out = run(promtool, "check", "rules", "rules.yaml", cwd=tmp_path)
    assert f"SUCCESS: {len(alert_names(rules()))} rules found" in out, out


def test_every_alert_fires_and_stays_silent_in_promtool_unit_tests(promtool, tmp_path):
    rule = rules()
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    shutil.copy(HERE / "alerts.test.yaml", tmp_path)
    run(promtool, "test", "rules", "alerts.test.yaml", cwd=tmp_path)
    tests = yaml.safe_load((HERE / "alerts.test.yaml").read_text())["tests"]
    cases = [case for t in tests for case in t["alert_rule_test"]]
    for name in alert_names(rule):
        fired = [c for c in cases if c["alertname"] == name and c["exp_alerts"]]
        silent = [c for c in cases if c["alertname"] == name and not c["exp_alerts"]]
        assert fired and silent, f"{name} needs a test where it fires and one where it does not"
    expected = {
        "DjangoMigrateWebhookDown",
        "DjangoMigrateWebhookErrors",
        "DjangoMigrateControllerPatchErrors",
        "DjangoMigrateCertificateExpiring",
        "DjangoMigrateMigrationFailed",
        "DjangoMigrateStepPendingTooLong",
        "DjangoMigrateUnsafeMigrationBlocked",
        "DjangoMigrateDeploymentsNotInjected",
        "DjangoMigrateMigrationBlockedByDeferred",
        "DjangoMigrateContractFailed",
        "DjangoMigrateContractPendingTooLong",
        "DjangoMigrateControllerNoLeader",
        "DjangoMigratePodsGatedWithoutController",
    }
    assert set(alert_names(rule)) == expected


def test_without_the_controller_there_is_no_leader_alert():
    docs = render({"controller": {"enabled": False}, "metrics": {"prometheusRule": {"enabled": True}}})
    names = alert_names(one(docs, "PrometheusRule"))
    assert "DjangoMigrateControllerNoLeader" not in names
    assert "DjangoMigratePodsGatedWithoutController" not in names


def dashboard(values=None):
    docs = render({"metrics": {"dashboard": {"enabled": True, **(values or {})}}})
    config_map = one(docs, "ConfigMap")
    return config_map, json.loads(config_map["data"]["django-migrate-webhook.json"])


def test_dashboard_is_a_configmap_the_grafana_sidecar_picks_up():
    config_map, board = dashboard()
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert board["uid"] == "django-migrate-webhook"
    config_map, _ = dashboard({"namespace": "monitoring", "labels": {"dashboards": "platform"}})
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["labels"]["dashboards"] == "platform"


# Grafana's variables, replaced by values Prometheus accepts.
VARIABLES = {"$__rate_interval": "5m", "$job": JOB, "$namespace": ".*"}


def test_every_dashboard_expression_is_valid_promql(promtool, tmp_path):
    _, board = dashboard()
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    metrics = set()
    records = []
    for i, expr in enumerate(exprs):
        for variable, value in VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"unknown Grafana variable in {expr}"
        metrics.update(re.findall(r"\b(django_migrate_[a-z_]+)", expr))
        records.append({"record": f"dashboard:panel_{i}", "expr": expr})
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    out = run(promtool, "check", "rules", "dashboard.yaml", cwd=tmp_path)
    assert f"SUCCESS: {len(records)} rules found" in out, out
    # Every metric the webhook exports has a panel.
    # The book's metrics table (checked against the registry by a unit test): one row per
    # metric, the name first.
    table = (ROOT / "docs" / "src" / "reference" / "metrics.md").read_text()
    exported = set(re.findall(r"^\| `(django_migrate_[a-z_]+)`", table, re.MULTILINE))
    assert len(exported) >= 20, f"the metrics table lists only {sorted(exported)}"
    base = {re.sub(r"_(bucket|count|sum)$", "", m) for m in metrics}
    missing = {m for m in exported if re.sub(r"_(bucket|count|sum)$", "", m) not in base}
    assert not missing, f"metrics without a panel: {sorted(missing)}"
