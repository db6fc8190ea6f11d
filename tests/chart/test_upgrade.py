"""`helm upgrade` in the middle of an application's rollout, on the real node: the chart's
own replicas roll (a new one Ready before an old one goes), the application's rollout
completes with every migration applied once, and the webhook and the controller never
have zero ready replicas meanwhile."""

import json
import threading
import time

from test_in_cluster import CHART, django_shop, get_json, kubectl, own_release, psql, ready, rolled_out


def test_helm_upgrade_during_a_rollout_leaves_no_pod_stuck():
    with own_release("upg", uninstall={"removeInjection": False}) as release:
        apps, namespace = release.apps, release.namespace
        shop = django_shop(apps, release.database)
        kubectl("apply", "-f", "-", stdin=json.dumps(shop))
        rolled_out(apps)

        # Watch the chart's ready replicas while it upgrades.
        ready_replicas = []
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                pods = get_json("pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={release.name}")["items"]
                ready_replicas.append(sum(ready(p) for p in pods if not p["metadata"].get("deletionTimestamp")))
                time.sleep(0.5)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            # A new application release, and at once a chart upgrade that rolls the chart's pods.
            shop["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "TWO_STEP_APP", "value": "1"})
            kubectl("apply", "-f", "-", stdin=json.dumps(shop))
            started = time.monotonic()
            values = {**release.values, "logFormat": "json"}
            release.config.upgrade(CHART, release.name, values, namespace=namespace, wait="watcher", timeout=240)
            upgraded = time.monotonic() - started
            rolled_out(apps)
            rolled = time.monotonic() - started
        finally:
            stop.set()
            watcher.join()
        args = get_json("deployment", release.fullname, "-n", namespace)["spec"]["template"]["spec"]["containers"][0][
            "args"
        ]
        assert "--log-format=json" in args, args
        assert min(ready_replicas) >= 1, f"ready replicas of the chart during the upgrade: {ready_replicas}"
        pods = [
            p
            for p in get_json("pods", "-n", apps, "-l", "app=shop")["items"]
            if not p["metadata"].get("deletionTimestamp")
        ]
        assert len(pods) == 3 and all(ready(p) for p in pods)
        assert psql(release.database, "SELECT count(*) FROM django_migrations WHERE app = 'twostep'") == "2"
        print(
            f"helm upgrade during a 3-replica rollout: upgraded in {upgraded:.1f}s, the app rolled out in "
            f"{rolled:.1f}s, the chart's ready replicas never below {min(ready_replicas)}"
        )
