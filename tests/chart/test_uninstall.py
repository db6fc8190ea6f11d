"""`helm uninstall` with opted-in Deployments, on the real node: the chart's pre-delete hook
takes the injection out of each one while the controller still runs and waits for the
rollout, so that afterwards no current or future pod waits for the readiness gate, and
nothing migrates again."""

import json
import time
import uuid

import helm_python as helm
from test_in_cluster import (
    CHART,
    VERSION,
    WEBHOOK_IMAGE,
    apps_namespace,
    django_shop,
    env,
    get_json,
    injected,
    kubectl,
    psql,
    ready,
    wait_until,
)

RELEASE = "unin"
SELECTED = {"e2e.django-migrate.io/in-cluster": "true"}


def test_uninstall_leaves_no_pod_waiting_for_the_gate():
    env("DJANGO_MIGRATE_TEST_POSTGRES_NODE_HOST")
    namespace = f"dmw-unin-{uuid.uuid4().hex[:6]}"
    values = {
        "image": {"repository": WEBHOOK_IMAGE, "tag": VERSION, "pullPolicy": "Never"},
        "webhook": {"namespaceSelector": {"matchLabels": SELECTED}},
        "logFormat": "text",
    }
    config = helm.Config(namespace=namespace)
    apps = None
    database = None
    try:
        config.install(CHART, RELEASE, values, namespace=namespace, create_namespace=True, wait="watcher", timeout=180)
        apps = apps_namespace("dmw-unin-apps")
        database = "unin_" + apps.replace("-", "_")
        psql("postgres", f"CREATE DATABASE {database}")
        kubectl("apply", "-f", "-", stdin=json.dumps(django_shop(apps, database)))
        assert injected(get_json("deployment", "shop", "-n", apps))
        rollout = kubectl("rollout", "status", "deployment/shop", "-n", apps, "--timeout=240s", check=False)
        assert rollout.returncode == 0, rollout.stdout + rollout.stderr
        applied = psql(database, "SELECT count(*) FROM django_migrations")

        started = time.monotonic()
        config.uninstall(RELEASE, wait="watcher", timeout=300)
        seconds = time.monotonic() - started

        stored = get_json("deployment", "shop", "-n", apps)
        spec = stored["spec"]["template"]["spec"]
        assert stored["metadata"]["labels"]["django-migrate.io/inject"] == "false"
        assert "initContainers" not in spec and "readinessGates" not in spec, spec
        assert "django-migrate.io/injected" not in stored["spec"]["template"]["metadata"]["labels"]
        pods = [
            p
            for p in get_json("pods", "-n", apps, "-l", "app=shop")["items"]
            if not p["metadata"].get("deletionTimestamp")
        ]
        assert len(pods) == 3 and all(ready(p) and not p["spec"].get("readinessGates") for p in pods), [
            (p["metadata"]["name"], p["status"].get("conditions")) for p in pods
        ]
        # Gone: the webhook configuration, the controller and the hook's own objects.
        assert kubectl(
            "get", "mutatingwebhookconfiguration", f"{RELEASE}-django-migrate-webhook", check=False
        ).returncode
        assert not get_json("jobs", "-n", namespace)["items"]
        # A pod made after the uninstall (a scale-up, a drain) becomes Ready on its own.
        kubectl("scale", "deployment", "shop", "-n", apps, "--replicas=4")
        wait_until(
            "4 Ready pods after the scale-up",
            lambda: sum(ready(p) for p in get_json("pods", "-n", apps, "-l", "app=shop")["items"]) == 4,
            timeout=120,
        )
        assert psql(database, "SELECT count(*) FROM django_migrations") == applied
        print(f"helm uninstall: the hook rolled shop (3 pods) out without the injection in {seconds:.1f}s")
    finally:
        try:
            config.uninstall(RELEASE, ignore_not_found=True, wait="watcher", timeout=300)
        except helm.HelmError as error:
            print(f"uninstall: {error}")
        for ns in (apps, namespace):
            if ns:
                kubectl("delete", "namespace", ns, "--wait=false", check=False)
        if database:
            psql("postgres", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
