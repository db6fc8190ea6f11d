"""Both controller replicas gone in the middle of a rollout, on the real node: the new pods
migrate and then wait on their gate while the old ones keep serving, and once the
controller is back the rollout completes with every migration applied once."""

import json
import time

from test_in_cluster import django_shop, get_json, kubectl, own_release, psql, ready, rolled_out, wait_until

OUTAGE = 120  # seconds without a controller


def shop_pods(namespace):
    pods = get_json("pods", "-n", namespace, "-l", "app=shop")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def gate(pod):
    for c in pod.get("status", {}).get("conditions", []):
        if c["type"] == "django-migrate.io/migrated":
            return c["status"]
    return None


def step_exit(pod):
    for s in pod.get("status", {}).get("initContainerStatuses", []):
        if s["name"] == "django-migrate":
            return (s.get("state", {}).get("terminated") or {}).get("exitCode")
    return None


def test_the_rollout_waits_for_the_controller_and_completes_when_it_is_back():
    with own_release("outage", uninstall={"removeInjection": False}) as release:
        apps, namespace, database = release.apps, release.namespace, release.database
        shop = django_shop(apps, database)
        kubectl("apply", "-f", "-", stdin=json.dumps(shop))
        rolled_out(apps)

        # A new release with new migrations (a throttled backfill among them, so that its
        # first pod is still migrating when the controller is gone), then no controller.
        shop["spec"]["template"]["spec"]["containers"][0]["env"] += [
            {"name": "TWO_STEP_APP", "value": "1"},
            {"name": "THROTTLED_APP", "value": "1"},
            {"name": "THROTTLE_PAUSE_SECONDS", "value": "10"},
        ]
        kubectl("apply", "-f", "-", stdin=json.dumps(shop))
        kubectl("scale", "deployment", release.fullname, "-n", namespace, "--replicas=0")
        wait_until("no controller pod", lambda: not get_json("pods", "-n", namespace)["items"], timeout=90)
        down = time.monotonic()
        served = []
        while time.monotonic() - down < OUTAGE:
            pods = shop_pods(apps)
            served.append(sum(ready(p) for p in pods))
            time.sleep(5)
        pods = shop_pods(apps)
        waiting = [p for p in pods if step_exit(p) == 0 and not ready(p)]
        # The first new pod migrated and waits on its gate; the old release keeps serving.
        assert waiting, [(p["metadata"]["name"], gate(p), step_exit(p)) for p in pods]
        assert min(served) >= 3, f"Ready pods during the outage: {served}"
        assert psql(database, "SELECT count(*) FROM django_migrations WHERE app IN ('twostep', 'throttled')") == "4"

        kubectl("scale", "deployment", release.fullname, "-n", namespace, "--replicas=2")
        back = time.monotonic()
        rolled_out(apps)
        recovered = time.monotonic() - back
        pods = shop_pods(apps)
        assert len(pods) == 3 and all(ready(p) and gate(p) == "True" for p in pods)
        assert psql(database, "SELECT count(*) FROM django_migrations WHERE app IN ('twostep', 'throttled')") == "4"
        assert psql(database, "SELECT count(*) FROM throttled_batch") == "3"
        print(
            f"controller down {OUTAGE}s during a rollout: {len(waiting)} new pod(s) migrated and waited, "
            f"at least {min(served)} Ready pods throughout; rollout complete {recovered:.1f}s after it was back"
        )
