"""`helm uninstall` with opted-in Deployments, on the real node: the chart's pre-delete hook
takes the injection out of each one while the controller still runs and waits for the
rollout, so that afterwards no current or future pod waits for the readiness gate, and
nothing migrates again."""

import json
import time

from test_in_cluster import django_shop, get_json, injected, kubectl, own_release, psql, ready, rolled_out, wait_until


def stateful_and_cron(shop):
    """The shop as a one-replica StatefulSet (`shop-db`) and a suspended CronJob (`nightly`)."""
    template = json.loads(json.dumps(shop["spec"]["template"]))
    template["metadata"]["labels"] = {"app": "shop-db"}
    labels = {"django-migrate.io/inject": "true"}
    meta = {"namespace": shop["metadata"]["namespace"], "labels": labels}
    stateful = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {**meta, "name": "shop-db"},
        "spec": {
            "replicas": 1,
            "serviceName": "shop-db",
            "selector": {"matchLabels": {"app": "shop-db"}},
            "template": template,
        },
    }
    job_pod = json.loads(json.dumps(shop["spec"]["template"]))
    job_pod.pop("metadata")
    job_pod["spec"]["restartPolicy"] = "Never"
    for c in job_pod["spec"]["containers"]:
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            c.pop(probe, None)
    cron = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {**meta, "name": "nightly"},
        "spec": {"schedule": "0 3 * * *", "suspend": True, "jobTemplate": {"spec": {"template": job_pod}}},
    }
    return stateful, cron


def test_uninstall_leaves_no_pod_waiting_for_the_gate():
    with own_release("unin") as release:
        apps = release.apps
        shop = django_shop(apps, release.database)
        kubectl("apply", "-f", "-", stdin=json.dumps(shop))
        assert injected(get_json("deployment", "shop", "-n", apps))
        rolled_out(apps)
        stateful, cron = stateful_and_cron(shop)
        kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": [stateful, cron]}))
        assert injected(get_json("statefulset", "shop-db", "-n", apps))
        wait_until(
            "the StatefulSet's pod Ready through its gate",
            lambda: any(ready(p) for p in get_json("pods", "-n", apps, "-l", "app=shop-db")["items"]),
            timeout=180,
        )
        applied = psql(release.database, "SELECT count(*) FROM django_migrations")

        started = time.monotonic()
        release.config.uninstall(release.name, wait="watcher", timeout=300)
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
        # The StatefulSet and the CronJob too: their templates are their own again, and the
        # StatefulSet's pod was replaced by one without a gate.
        stateful = get_json("statefulset", "shop-db", "-n", apps)
        assert "initContainers" not in stateful["spec"]["template"]["spec"], stateful["spec"]["template"]
        assert "readinessGates" not in stateful["spec"]["template"]["spec"]
        (pod,) = get_json("pods", "-n", apps, "-l", "app=shop-db")["items"]
        assert ready(pod) and not pod["spec"].get("readinessGates"), pod["status"].get("conditions")
        cron = get_json("cronjob", "nightly", "-n", apps)
        assert "django-migrate.io/" not in json.dumps(cron["spec"]["jobTemplate"]), cron["spec"]["jobTemplate"]
        assert cron["metadata"]["labels"]["django-migrate.io/inject"] == "false"
        # Gone: the webhook configuration, the controller and the hook's own objects.
        assert kubectl("get", "mutatingwebhookconfiguration", release.fullname, check=False).returncode
        assert not get_json("jobs", "-n", release.namespace)["items"]
        # A pod made after the uninstall (a scale-up, a drain) becomes Ready on its own.
        kubectl("scale", "deployment", "shop", "-n", apps, "--replicas=4")
        wait_until(
            "4 Ready pods after the scale-up",
            lambda: sum(ready(p) for p in get_json("pods", "-n", apps, "-l", "app=shop")["items"]) == 4,
            timeout=120,
        )
        assert psql(release.database, "SELECT count(*) FROM django_migrations") == applied
        print(f"helm uninstall: the hook rolled shop (3 pods) out without the injection in {seconds:.1f}s")
