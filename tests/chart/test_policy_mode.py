"""The chart in `mode: policy`, installed with real Helm on the test cluster's real node: where
the API server serves admission policies as `admissionregistration.k8s.io/v1` (Kubernetes
1.36+), the chart installs the policies and a controller-only Deployment (no webhook, no
Service, no certificate) and a 3-replica Django Deployment migrates through them exactly
once; where it does not (1.34, 1.35), the install is refused with the reason. scripts/test.sh
runs this tier on every version it tests, so both branches run."""

import json
import os
import pathlib
import subprocess
import time
import uuid

import helm_python as helm
import pytest
from test_in_cluster import (
    DJANGO_IMAGE,
    VERSION,
    WEBHOOK_IMAGE,
    deployment,
    django_shop,
    env,
    get_json,
    injected,
    kubectl,
    psql,
    ready,
    wait_until,
)

RELEASE = "e2e-policy"
FULLNAME = f"{RELEASE}-django-migrate-webhook"
SELECTED = {"e2e.django-migrate.io/policy-mode": "true"}
ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = str(ROOT / "charts" / "django-migrate-webhook")
# The binary `cargo test` built, wherever cargo puts its target directory.
BIN = pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "debug" / "django-migrate-webhook"


def serves_policies():
    """What Helm's capabilities read: the resources of admissionregistration.k8s.io/v1."""
    group = json.loads(kubectl("get", "--raw", "/apis/admissionregistration.k8s.io/v1").stdout)
    return any(r["name"] == "mutatingadmissionpolicies" for r in group["resources"])


def values():
    return {
        "mode": "policy",
        "image": {"repository": WEBHOOK_IMAGE, "tag": VERSION, "pullPolicy": "Never"},
        # Only this module's namespaces: other tiers register webhooks of their own.
        "webhook": {"namespaceSelector": {"matchLabels": SELECTED}},
        "logFormat": "text",
    }


def test_policy_mode_without_a_controller_or_a_cluster_says_what_it_needs():
    chart = helm.Chart.load(CHART)
    with pytest.raises(helm.HelmError) as error:
        chart.render({"mode": "policy", "controller": {"enabled": False}}, name=RELEASE, namespace="x")
    assert "mode policy needs controller.enabled" in str(error.value)
    with pytest.raises(helm.HelmError) as error:
        chart.render({"mode": "policy"}, name=RELEASE, namespace="x")
    message = str(error.value)
    assert "admissionregistration.k8s.io/v1" in message and "Kubernetes 1.36" in message, message
    assert "--api-versions admissionregistration.k8s.io/v1/MutatingAdmissionPolicy" in message, message


@pytest.fixture(scope="module")
def installed():
    """The chart installed in policy mode, or the refusal where the cluster cannot run it."""
    env("DJANGO_MIGRATE_TEST_POSTGRES_NODE_HOST")
    namespace = f"dmw-policy-{uuid.uuid4().hex[:6]}"
    config = helm.Config(namespace=namespace)
    started = time.monotonic()
    try:
        try:
            config.install(
                CHART, RELEASE, values(), namespace=namespace, create_namespace=True, wait="watcher", timeout=180
            )
            yield namespace, time.monotonic() - started, None
        except helm.HelmError as error:
            yield namespace, time.monotonic() - started, error
    finally:
        for pod in get_json("pods", "-n", namespace)["items"] if namespace_exists(namespace) else []:
            logs = kubectl("logs", "-n", namespace, pod["metadata"]["name"], "--tail=20", check=False).stdout
            print(f"--- {pod['metadata']['name']}\n{logs}")
        try:
            config.uninstall(RELEASE, ignore_not_found=True, wait="watcher", timeout=60)
        except helm.HelmError as error:
            print(f"uninstall: {error}")
        kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)


def namespace_exists(name):
    return kubectl("get", "namespace", name, check=False).returncode == 0


def test_policy_mode_installs_where_the_api_server_serves_it_and_is_refused_elsewhere(installed):
    namespace, seconds, error = installed
    version = json.loads(kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    if not serves_policies():
        assert error is not None, f"{version} does not serve the v1 policies, yet the chart installed"
        assert "mode policy needs MutatingAdmissionPolicy from admissionregistration.k8s.io/v1" in str(error)
        assert version.split("+")[0] in str(error), str(error)
        assert kubectl("get", "mutatingadmissionpolicy", FULLNAME, check=False).returncode != 0
        print(f"{version}: policy mode refused: {error}")
        return
    assert error is None, f"{version}: {error}"
    pods = [p for p in get_json("pods", "-n", namespace)["items"] if not p["metadata"].get("deletionTimestamp")]
    assert len(pods) == 2 and all(ready(p) for p in pods), [p["status"] for p in pods]
    args = pods[0]["spec"]["containers"][0]["args"]
    assert "--no-webhook" in args and not any(a.startswith("--tls-cert") for a in args), args
    assert kubectl("get", "mutatingwebhookconfiguration", FULLNAME, check=False).returncode != 0
    assert kubectl("get", "service", FULLNAME, "-n", namespace, check=False).returncode != 0
    assert kubectl("get", "secret", f"{FULLNAME}-tls", "-n", namespace, check=False).returncode != 0
    for kind, name in [
        ("mutatingadmissionpolicy", FULLNAME),
        ("mutatingadmissionpolicybinding", FULLNAME),
        ("validatingadmissionpolicy", f"{FULLNAME}-settings"),
        ("validatingadmissionpolicybinding", f"{FULLNAME}-settings"),
        ("validatingadmissionpolicy", f"{FULLNAME}-warnings"),
        ("validatingadmissionpolicybinding", f"{FULLNAME}-warnings"),
    ]:
        kubectl("get", kind, name)
    # `status` finds the policy binding: a Deployment outside its namespaces is named as such.
    outside = f"dmw-policy-outside-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", outside)
    try:
        kubectl("apply", "-f", "-", stdin=json.dumps(deployment(outside, "plain")))
        assert not injected(get_json("deployment", "plain", "-n", outside))
        status = subprocess.run([str(BIN), "status", "-n", outside], capture_output=True, text=True)
        assert status.returncode == 1, status.stdout + status.stderr
        assert "not selected by the namespaceSelector of the webhook or the policy binding" in status.stdout, (
            status.stdout
        )
    finally:
        kubectl("delete", "namespace", outside, "--wait=false", check=False)
    print(f"{version}: chart installed in policy mode, 2 controller replicas Ready after {seconds:.1f}s")


def test_a_django_deployment_migrates_once_through_the_policies(installed):
    namespace, _, error = installed
    if error is not None:
        assert not serves_policies(), error
        return
    apps = f"dmw-policy-django-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", apps)
    kubectl("label", "namespace", apps, *(f"{k}={v}" for k, v in SELECTED.items()))
    database = "e2e_" + apps.replace("-", "_")
    psql("postgres", f"CREATE DATABASE {database}")
    try:
        spec = django_shop(apps, database)
        spec["metadata"]["annotations"] = {"django-migrate.io/mode": "fast"}
        refused = kubectl("apply", "-f", "-", stdin=json.dumps(spec), check=False)
        assert refused.returncode != 0, "a bad setting is denied in policy mode too"
        assert 'django-migrate: annotation django-migrate.io/mode: invalid value "fast"' in refused.stderr
        del spec["metadata"]["annotations"]
        started = time.monotonic()
        applied = kubectl("apply", "-f", "-", stdin=json.dumps(spec))
        assert "django-migrate: injected init containers django-migrate-code and django-migrate" in applied.stderr
        stored = get_json("deployment", "shop", "-n", apps)
        assert injected(stored), stored["spec"]["template"]["spec"]
        assert stored["spec"]["template"]["spec"]["initContainers"][0]["image"] == f"{WEBHOOK_IMAGE}:{VERSION}"
        assert stored["spec"]["template"]["spec"]["initContainers"][1]["image"] == DJANGO_IMAGE
        rollout = kubectl("rollout", "status", "deployment/shop", "-n", apps, "--timeout=240s", check=False)
        assert rollout.returncode == 0, rollout.stdout + rollout.stderr + kubectl("describe", "pods", "-n", apps).stdout
        seconds = time.monotonic() - started
        pods = wait_until(
            "3 Ready pods",
            lambda: (
                [
                    p
                    for p in get_json("pods", "-n", apps)["items"]
                    if ready(p) and not p["metadata"].get("deletionTimestamp")
                ]
                if len(get_json("pods", "-n", apps)["items"]) == 3
                else None
            ),
        )
        assert len(pods) == 3
        for pod in pods:
            gate = [c for c in pod["status"]["conditions"] if c["type"] == "django-migrate.io/migrated"]
            assert gate and gate[0]["status"] == "True", pod["status"]["conditions"]
        twice = psql(database, "SELECT app, name FROM django_migrations GROUP BY app, name HAVING count(*) > 1")
        assert twice == "", f"applied more than once: {twice}"
        applied_count = int(psql(database, "SELECT count(*) FROM django_migrations WHERE app = 'catalog'"))
        assert applied_count >= 3
        print(f"policy mode: 3 replicas rolled out in {seconds:.1f}s; {applied_count} catalog migrations once")
    finally:
        kubectl("delete", "namespace", apps, "--wait=false", check=False)
