"""Upgrades on the real node.

- `helm upgrade` in the middle of an application's rollout: the chart's own replicas roll
  (a new one Ready before an old one goes), the application's rollout completes with every
  migration applied once, and the webhook and the controller never have zero ready
  replicas meanwhile.
- A Deployment stored in the shape an earlier release injected (two Django init
  containers running the program inline, tests/fixtures/upgrade/inline_step.py) keeps
  getting Ready pods from this release's controller, and is rewritten to this release's
  shape when it is applied again."""

import copy
import datetime
import json
import subprocess
import threading
import time

from test_check import BIN
from test_in_cluster import (
    CHART,
    ROOT,
    SELECTED,
    django_shop,
    get_json,
    injected,
    kubectl,
    own_release,
    psql,
    ready,
    rolled_out,
    wait_until,
)

GATE = "django-migrate.io/migrated"


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


def inline_step_code():
    """The earlier release's program as it stored it in a template: comment-only and blank
    lines removed, the first line naming its source."""
    lines = (ROOT / "tests" / "fixtures" / "upgrade" / "inline_step.py").read_text().splitlines()
    kept = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return "# django-migrate-webhook: src/injected/django_migrate.py, comments removed\n" + "\n".join(kept) + "\n"


def earlier_shape(deployment):
    """`deployment` as the earlier release's webhook stored it: `django-wait-for-db` and
    `django-migrate`, each a copy of the app container running `python3 -c
    "$(DJANGO_MIGRATE_CODE)"`, the gate and the injected label."""
    stored = copy.deepcopy(deployment)
    template = stored["spec"]["template"]
    app = template["spec"]["containers"][0]
    code = inline_step_code()

    def step(name, step, timeout):
        container = {k: app[k] for k in ("image", "imagePullPolicy", "envFrom", "volumeMounts") if k in app}
        return {
            "name": name,
            **container,
            "command": ["python3", "-c", "$(DJANGO_MIGRATE_CODE)"],
            "env": [
                *app.get("env", []),
                {"name": "DJANGO_MIGRATE_STEP", "value": step},
                {"name": "DJANGO_MIGRATE_DATABASE", "value": "default"},
                {"name": "DJANGO_MIGRATE_MANAGE_COMMAND", "value": "python3 manage.py"},
                {"name": "DJANGO_MIGRATE_TIMEOUT", "value": str(timeout)},
                {"name": "DJANGO_MIGRATE_CODE", "value": code},
            ],
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }

    template["spec"]["initContainers"] = [
        step("django-wait-for-db", "wait-for-db", 300),
        step("django-migrate", "migrate", 1800),
    ]
    template["spec"]["readinessGates"] = [{"conditionType": GATE}]
    template["metadata"]["labels"]["django-migrate.io/injected"] = "true"
    return stored


def gate_of(pod):
    return next((c for c in pod.get("status", {}).get("conditions", []) if c["type"] == GATE), None)


def live_pods(namespace):
    pods = get_json("pods", "-n", namespace, "-l", "app=shop")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def seconds_to_ready(pod):
    """From the pod's creation to its Ready condition, by the API server's clock."""

    ready_at = next(c["lastTransitionTime"] for c in pod["status"]["conditions"] if c["type"] == "Ready")
    since = datetime.datetime.fromisoformat(ready_at) - datetime.datetime.fromisoformat(
        pod["metadata"]["creationTimestamp"]
    )
    return since.total_seconds()


def applied_twice(database):
    return psql(
        database, "SELECT count(*) FROM (SELECT 1 FROM django_migrations GROUP BY app, name HAVING count(*) > 1) t"
    )


def test_a_deployment_in_an_earlier_release_shape_keeps_rolling_out_and_is_rewritten_when_applied():
    with own_release("legacy", uninstall={"removeInjection": False}) as release:
        apps, database = release.apps, release.database
        shop = django_shop(apps, database)
        shop["spec"]["replicas"] = 2

        # Stored as the earlier release's webhook left it: created while the namespace was not
        # selected, so that this release's webhook does not see it.
        kubectl("label", "namespace", apps, *(f"{k}-" for k in SELECTED))
        kubectl("create", "-f", "-", stdin=json.dumps(earlier_shape(shop)))
        kubectl("label", "namespace", apps, *(f"{k}={v}" for k, v in SELECTED.items()))
        rolled_out(apps)
        pods = live_pods(apps)
        assert len(pods) == 2
        for pod in pods:
            names = [c["name"] for c in pod["spec"]["initContainers"]]
            assert names == ["django-wait-for-db", "django-migrate"], names
            gate = gate_of(pod)
            assert gate and gate["status"] == "True" and gate["reason"] == "Migrated", gate
        earlier = [round(seconds_to_ready(p)) for p in pods]
        migrations = int(psql(database, "SELECT count(*) FROM django_migrations"))
        assert migrations > 0 and applied_twice(database) == "0"

        # A scale-up and a replaced pod (neither goes through the webhook) get pods of the
        # earlier shape, and this release's controller opens their gate.
        kubectl("scale", "deployment", "shop", "-n", apps, "--replicas=3")
        kubectl("delete", "pod", pods[0]["metadata"]["name"], "-n", apps, "--wait=false")
        rolled_out(apps)
        wait_until("3 Ready pods", lambda: len(live_pods(apps)) == 3 and all(ready(p) for p in live_pods(apps)))
        stored = get_json("deployment", "shop", "-n", apps)
        assert [c["name"] for c in stored["spec"]["template"]["spec"]["initContainers"]] == [
            "django-wait-for-db",
            "django-migrate",
        ]
        new = [p for p in live_pods(apps) if p["metadata"]["name"] not in {q["metadata"]["name"] for q in pods}]
        assert len(new) == 2 and all(gate_of(p)["status"] == "True" for p in new)
        earlier += [round(seconds_to_ready(p)) for p in new]
        # `status` reads these pods' steps too: each ended with the earlier program's message.
        status = subprocess.run([str(BIN), "status", "shop", "-n", apps], capture_output=True, text=True)
        assert status.returncode == 0, status.stdout + status.stderr
        lines = [line for line in status.stdout.splitlines() if line.lstrip().startswith("pod ")]
        assert len(lines) == 3 and all(": applied: migrate: " in line for line in lines), status.stdout

        # The team applies its next release: the webhook rewrites the template to this
        # release's shape, and the new pods migrate the release's two migrations once.
        shop["spec"]["replicas"] = 3
        shop["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "TWO_STEP_APP", "value": "1"})
        started = time.monotonic()
        kubectl("apply", "-f", "-", stdin=json.dumps(shop))
        rolled_out(apps)
        rolled = time.monotonic() - started
        stored = get_json("deployment", "shop", "-n", apps)
        assert injected(stored), stored["spec"]["template"]["spec"]["initContainers"]
        text = json.dumps(stored["spec"]["template"])
        assert "django-wait-for-db" not in text and "DJANGO_MIGRATE_CODE" not in text
        pods = live_pods(apps)
        assert len(pods) == 3 and all(ready(p) and gate_of(p)["status"] == "True" for p in pods)
        assert all(injected({"spec": {"template": p}}) for p in pods)
        assert psql(database, "SELECT count(*) FROM django_migrations WHERE app = 'twostep'") == "2"
        assert int(psql(database, "SELECT count(*) FROM django_migrations")) == migrations + 2
        assert applied_twice(database) == "0"
        print(
            f"earlier shape under this release's controller: 4 pods Ready in {earlier} s from creation, "
            f"{migrations} migrations applied once; applied again: rewritten, 3 pods of this release's "
            f"shape rolled out in {rolled:.1f}s, twostep's 2 migrations applied once"
        )
