"""`helm upgrade` in the middle of an application's rollout, on the real node: the chart's
own replicas roll (a new one Ready before an old one goes), the application's rollout
completes with every migration applied once, and the webhook and the controller never
have zero ready replicas meanwhile."""

import json
import threading
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
    kubectl,
    psql,
    ready,
)

RELEASE = "upg"
SELECTED = {"e2e.django-migrate.io/in-cluster": "true"}


def test_helm_upgrade_during_a_rollout_leaves_no_pod_stuck():
    env("DJANGO_MIGRATE_TEST_POSTGRES_NODE_HOST")
    namespace = f"dmw-upg-{uuid.uuid4().hex[:6]}"
    fullname = f"{RELEASE}-django-migrate-webhook"
    values = {
        "image": {"repository": WEBHOOK_IMAGE, "tag": VERSION, "pullPolicy": "Never"},
        "webhook": {"namespaceSelector": {"matchLabels": SELECTED}},
        "uninstall": {"removeInjection": False},
        "logFormat": "text",
    }
    config = helm.Config(namespace=namespace)
    apps = database = None
    try:
        config.install(CHART, RELEASE, values, namespace=namespace, create_namespace=True, wait="watcher", timeout=180)
        apps = apps_namespace("dmw-upg-apps")
        database = "upg_" + apps.replace("-", "_")
        psql("postgres", f"CREATE DATABASE {database}")
        shop = django_shop(apps, database)
        kubectl("apply", "-f", "-", stdin=json.dumps(shop))
        rollout = kubectl("rollout", "status", "deployment/shop", "-n", apps, "--timeout=240s", check=False)
        assert rollout.returncode == 0, rollout.stdout + rollout.stderr

        # Watch the chart's ready replicas while it upgrades.
        ready_replicas = []
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                pods = get_json("pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={RELEASE}")["items"]
                ready_replicas.append(sum(ready(p) for p in pods if not p["metadata"].get("deletionTimestamp")))
                time.sleep(0.5)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            # A new application release, and at once a chart upgrade that rolls the chart's pods.
            shop["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "TWO_STEP_APP", "value": "1"})
            kubectl("apply", "-f", "-", stdin=json.dumps(shop))
            started = time.monotonic()
            config.upgrade(
                CHART, RELEASE, {**values, "logFormat": "json"}, namespace=namespace, wait="watcher", timeout=240
            )
            upgraded = time.monotonic() - started
            rollout = kubectl("rollout", "status", "deployment/shop", "-n", apps, "--timeout=240s", check=False)
            assert rollout.returncode == 0, rollout.stdout + rollout.stderr
            rolled = time.monotonic() - started
        finally:
            stop.set()
            watcher.join()
        args = get_json("deployment", fullname, "-n", namespace)["spec"]["template"]["spec"]["containers"][0]["args"]
        assert "--log-format=json" in args, args
        assert min(ready_replicas) >= 1, f"ready replicas of the chart during the upgrade: {ready_replicas}"
        pods = [
            p
            for p in get_json("pods", "-n", apps, "-l", "app=shop")["items"]
            if not p["metadata"].get("deletionTimestamp")
        ]
        assert len(pods) == 3 and all(ready(p) for p in pods)
        assert psql(database, "SELECT count(*) FROM django_migrations WHERE app = 'twostep'") == "2"
        print(
            f"helm upgrade during a 3-replica rollout: upgraded in {upgraded:.1f}s, the app rolled out in "
            f"{rolled:.1f}s, the chart's ready replicas never below {min(ready_replicas)}"
        )
    finally:
        try:
            config.uninstall(RELEASE, ignore_not_found=True, wait="watcher", timeout=180)
        except helm.HelmError as error:
            print(f"uninstall: {error}")
        for ns in (apps, namespace):
            if ns:
                kubectl("delete", "namespace", ns, "--wait=false", check=False)
        if database:
            psql("postgres", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
