"""Time from pod creation to Ready on a real node: the Django test image's Deployment plain
against the same Deployment injected, with nothing pending. Target: the injection adds at
most 1 s.

Two Deployments of localhost/e2e/django:test (the pod of tests/node/main.rs's
django_deployment_with, SLOW_MIGRATION_SECONDS=0, no probe unless --probe tcp, and then the
same probe on both) in a namespace of their own, both at 0 replicas: `plain`, without the
opt-in label, and `injected`, the output of `django-migrate-webhook inject --code-image
<webhook image> --code-image-pull-policy Never` (the webhook is not in the write path; the
manifest is injected before kubectl applies it). `serve --controller` runs beside the
cluster so that the readiness gate of the injected pods is set. A fresh PostgreSQL
database is migrated by one untimed injected pod (no record yet: it takes the full path,
migrates and writes the fast path's record); one untimed plain pod warms the node alike.

Then N rounds, interleaved (plain, injected, plain, injected, ...). A round scales the
Deployment from 0 to 1 (the ReplicaSet controller creates the pod, the scheduler binds
it, the kubelet starts it: a scale-out as in production) and times, on a monotonic clock,
from the scale request until a GET of the pod every 50 ms sees its Ready condition True;
then scales back to 0 and waits until the pod is gone. The phases seen on the way (pod
seen, scheduled, initialized, containers ready, gate set) are kept too. After each
injected round it reads the step's summary (the termination message of the
django-migrate init container) and stops the benchmark unless its result is
nothing-pending with fast_path.taken true (--allow-full-path measures on instead), and it
keeps the step's own duration: the summary's seconds.total, and the container's
finishedAt - startedAt (whole seconds).

Prints a markdown table (variant | median s | min | max), the difference of the medians
against the target, the medians of the phases and the step's own seconds; --json FILE
writes every round's numbers.

    python3 bench/time_to_ready.py --rounds 10 --json time-to-ready.json

Needs: a control plane with a real node and the node tier's images, and PostgreSQL
listening on the node's bridge address; from the root of the repository:

    cargo build --release --bin django-migrate-webhook
    IMAGES="pause busybox webhook django" bash scripts/kube/build-images.sh
    WITH_NODE=1 KUBE_VERSION=1.37.2 bash scripts/kube/start-cluster.sh /tmp/ttr-cluster
    bash scripts/kube/start-node.sh /tmp/ttr-cluster
    DB_EXTRA_LISTEN=10.244.0.1 DB_EXTRA_CIDR=10.244.0.0/24 bash scripts/databases.sh start /tmp/ttr-db
    source /tmp/ttr-cluster/env; source /tmp/ttr-db/env
    python3 bench/time_to_ready.py

and afterwards: bash scripts/kube/stop-node.sh /tmp/ttr-cluster; bash
scripts/kube/stop-cluster.sh /tmp/ttr-cluster --purge; bash scripts/databases.sh stop
/tmp/ttr-db. The environment it reads: KUBECONFIG, KUBE_APISERVER_URL, KUBE_CA_FILE,
KUBE_ADMIN_TOKEN and kubectl on PATH (the env file of scripts/kube/start-cluster.sh);
DJANGO_MIGRATE_TEST_POSTGRES_PORT, DJANGO_MIGRATE_TEST_POSTGRES_NODE_HOST,
DJANGO_MIGRATE_TEST_DB_USER and DJANGO_MIGRATE_TEST_DB_PASSWORD (the env file of
scripts/databases.sh start with DB_EXTRA_LISTEN); psql.
"""

import argparse
import calendar
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

from controller import Api, Controller

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "django-migrate-webhook")
DJANGO_IMAGE = "localhost/e2e/django:test"
STEP = "django-migrate"
GATE = "django-migrate.io/migrated"
POLL_SECONDS = 0.05
VARIANTS = ("plain", "injected")
TARGET_SECONDS = 1.0
CLUSTER_ENV = ("KUBECONFIG", "KUBE_APISERVER_URL", "KUBE_CA_FILE", "KUBE_ADMIN_TOKEN")
DB_ENV = (
    "DJANGO_MIGRATE_TEST_POSTGRES_PORT",
    "DJANGO_MIGRATE_TEST_POSTGRES_NODE_HOST",
    "DJANGO_MIGRATE_TEST_DB_USER",
    "DJANGO_MIGRATE_TEST_DB_PASSWORD",
)
# Phases in the order a pod passes them: (key, what the poll sees).
PHASES = (
    ("seen", "the pod exists"),
    ("scheduled", "PodScheduled True"),
    ("initialized", "Initialized True"),
    ("containers_ready", "ContainersReady True"),
    ("gate", GATE + " True"),
    ("ready", "Ready True"),
)
# Waiting reasons that never resolve by themselves.
STUCK = (
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
)


def check_environment():
    missing = [name for name in CLUSTER_ENV if not os.environ.get(name)]
    if missing:
        sys.exit(
            "%s not set: start a control plane with a node and source its env file "
            "(WITH_NODE=1 bash scripts/kube/start-cluster.sh DIR; bash scripts/kube/start-node.sh DIR; "
            "source DIR/env)" % ", ".join(missing)
        )
    missing = [name for name in DB_ENV if not os.environ.get(name)]
    if missing:
        sys.exit(
            "%s not set: start the databases with PostgreSQL on the node's bridge and source their env file "
            "(DB_EXTRA_LISTEN=10.244.0.1 DB_EXTRA_CIDR=10.244.0.0/24 bash scripts/databases.sh start DBDIR; "
            "source DBDIR/env)" % ", ".join(missing)
        )
    for tool in ("kubectl", "psql"):
        if shutil.which(tool) is None:
            sys.exit("%s is not on PATH (kubectl: the env file of scripts/kube/start-cluster.sh)" % tool)
    if not os.access(BINARY, os.X_OK):
        sys.exit("%s missing: cargo build --release --bin django-migrate-webhook" % BINARY)


def check_node(api):
    nodes = api.request("GET", "/api/v1/nodes")["items"]
    ready = [
        n["metadata"]["name"]
        for n in nodes
        if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
    ]
    if not ready:
        sys.exit("no Ready node in this cluster: start one with bash scripts/kube/start-node.sh DIR")
    return ready[0]


def webhook_image():
    """The node tier's webhook image (tests/node/main.rs: fn webhook_image)."""
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        version = re.search(r'^version = "([^"]+)"', f.read(), re.M).group(1)
    return "localhost/e2e/django-migrate-webhook:%s" % version


def psql(sql):
    env = dict(os.environ, PGPASSWORD=os.environ["DJANGO_MIGRATE_TEST_DB_PASSWORD"])
    subprocess.run(
        [
            "psql", "-h", "127.0.0.1", "-p", os.environ["DJANGO_MIGRATE_TEST_POSTGRES_PORT"],
            "-U", os.environ["DJANGO_MIGRATE_TEST_DB_USER"], "-d", "postgres", "-tA", "-v", "ON_ERROR_STOP=1",
            "-c", sql,
        ],
        check=True, env=env, capture_output=True,
    )  # fmt: skip


def deployment(ns, name, database, probe, opted_in):
    """The node tier's Django Deployment (tests/node/main.rs: django_deployment_with) at 0
    replicas."""
    env = [
        ("DB_ENGINE", "postgresql"),
        ("DB_NAME", database),
        ("DB_HOST", os.environ["DJANGO_MIGRATE_TEST_POSTGRES_NODE_HOST"]),
        ("DB_PORT", os.environ["DJANGO_MIGRATE_TEST_POSTGRES_PORT"]),
        ("DB_USER", os.environ["DJANGO_MIGRATE_TEST_DB_USER"]),
        ("DB_PASSWORD", os.environ["DJANGO_MIGRATE_TEST_DB_PASSWORD"]),
        ("SLOW_MIGRATION_SECONDS", "0"),
    ]
    container = {
        "name": "web",
        "image": DJANGO_IMAGE,
        "imagePullPolicy": "Never",
        "env": [{"name": k, "value": v} for k, v in env],
    }
    if probe == "tcp":
        container["ports"] = [{"containerPort": 8000}]
        container["readinessProbe"] = {"tcpSocket": {"port": 8000}, "periodSeconds": 1, "failureThreshold": 1}
    labels = {"app": name}
    if opted_in:
        labels["django-migrate.io/inject"] = "true"
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"terminationGracePeriodSeconds": 2, "containers": [container]},
            },
        },
    }


def inject(manifest, code_image):
    out = subprocess.run(
        [BINARY, "inject", "-o", "json", "--code-image", code_image, "--code-image-pull-policy", "Never"],
        input=json.dumps(manifest).encode(),
        check=True,
        capture_output=True,
    ).stdout
    injected = json.loads(out)
    init = [c["name"] for c in injected["spec"]["template"]["spec"].get("initContainers", [])]
    if STEP not in init:
        sys.exit("`inject` did not add the %s init container: %s" % (STEP, json.dumps(injected)[:500]))
    return injected


def kubectl_apply(manifest):
    subprocess.run(["kubectl", "apply", "-f", "-"], input=json.dumps(manifest).encode(), check=True)


def condition(pod, kind):
    for c in pod.get("status", {}).get("conditions", []) or []:
        if c["type"] == kind:
            return c["status"] == "True"
    return False


def timestamp(text):
    """Seconds since the epoch of an RFC 3339 time of the API (whole seconds)."""
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


class Bench:
    def __init__(self, api, ns, timeout, allow_full_path):
        self.api, self.ns, self.timeout, self.allow_full_path = api, ns, timeout, allow_full_path

    def pods(self, name):
        selector = urllib.parse.quote("app=%s" % name)
        return self.api.request("GET", "/api/v1/namespaces/%s/pods?labelSelector=%s" % (self.ns, selector))["items"]

    def scale(self, name, replicas):
        self.api.request(
            "PATCH", "/apis/apps/v1/namespaces/%s/deployments/%s/scale" % (self.ns, name),
            {"spec": {"replicas": replicas}}, "application/merge-patch+json",
        )  # fmt: skip

    def stuck(self, pod):
        """Why the pod will never become Ready by itself, or None."""
        status = pod.get("status", {})
        for s in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            state = s.get("state", {})
            waiting = state.get("waiting") or {}
            if waiting.get("reason") in STUCK:
                return "%s: %s %s" % (s["name"], waiting["reason"], waiting.get("message", ""))
            terminated = state.get("terminated") or {}
            if terminated and terminated.get("exitCode", 0) != 0:
                return "%s: exit code %s: %s" % (s["name"], terminated["exitCode"], terminated.get("message", ""))
        return None

    def round(self, name):
        """Scales `name` to 1 and returns (seconds to Ready, phases, the Ready pod)."""
        if self.pods(name):
            sys.exit("%s still has a pod before its round" % name)
        started = time.monotonic()
        self.scale(name, 1)
        seen = {}
        while True:
            pods = [p for p in self.pods(name) if not p["metadata"].get("deletionTimestamp")]
            now = time.monotonic() - started
            if len(pods) > 1:
                sys.exit("%s has %d pods" % (name, len(pods)))
            if pods:
                pod = pods[0]
                seen.setdefault("seen", now)
                for key, kind in (
                    ("scheduled", "PodScheduled"), ("initialized", "Initialized"),
                    ("containers_ready", "ContainersReady"), ("gate", GATE), ("ready", "Ready"),
                ):  # fmt: skip
                    if condition(pod, kind):
                        seen.setdefault(key, now)
                if "ready" in seen:
                    return seen["ready"], seen, pod
                why = self.stuck(pod)
                if why:
                    self.fail(name, pod, "the pod will not become Ready: " + why)
            if now > self.timeout:
                self.fail(name, pods[0] if pods else None, "not Ready after %.0f s" % self.timeout)
            time.sleep(POLL_SECONDS)

    def down(self, name):
        """Scales `name` to 0 and waits until its pod is gone."""
        self.scale(name, 0)
        deadline = time.monotonic() + self.timeout
        while self.pods(name):
            if time.monotonic() > deadline:
                sys.exit("the pod of %s is still there %.0f s after scaling to 0" % (name, self.timeout))
            time.sleep(0.2)

    def fail(self, name, pod, message):
        if pod is not None:
            print(json.dumps(pod.get("status", {}), indent=1), file=sys.stderr)
            out = subprocess.run(
                ["kubectl", "logs", "-n", self.ns, pod["metadata"]["name"], "-c", STEP],
                capture_output=True, text=True,
            )  # fmt: skip
            if out.stdout:
                print("--- %s log:\n%s" % (STEP, out.stdout[-4000:]), file=sys.stderr)
        raise SystemExit("%s: %s" % (name, message))


def step(pod):
    """The step's summary and its container's start and end (whole seconds), from the pod."""
    for s in pod.get("status", {}).get("initContainerStatuses") or []:
        if s["name"] == STEP:
            terminated = (s.get("state") or {}).get("terminated")
            if not terminated:
                return None
            message = terminated.get("message") or ""
            try:
                summary = json.loads(message)
            except ValueError:
                summary = {"unparsed": message}
            wall = timestamp(terminated["finishedAt"]) - timestamp(terminated["startedAt"])
            return {"summary": summary, "container_seconds": wall, "exit_code": terminated.get("exitCode")}
    return None


def check_fast_path(info, allow_full_path, warm_up=False):
    """Stops the benchmark unless the step took the fast path (the warm-up only reports)."""
    if info is None:
        sys.exit("no terminated %s init container in the injected pod" % STEP)
    summary = info["summary"]
    if "unparsed" in summary:
        sys.exit("the step's termination message is not a JSON summary: %r" % summary["unparsed"][:1000])
    if "fast_path" not in summary:
        sys.exit(
            "the step's summary has no fast_path: the webhook image predates the fast path "
            "(IMAGES=webhook bash scripts/kube/build-images.sh, then restart the node): %s" % json.dumps(summary)
        )
    fast = summary["fast_path"] or {}
    if warm_up:
        return
    if summary.get("result") != "nothing-pending" or not fast.get("taken"):
        text = "fast path not taken: result %r, fast_path.why: %s\nsummary: %s" % (
            summary.get("result"),
            fast.get("why"),
            json.dumps(summary),
        )
        if not allow_full_path:
            sys.exit(text)
        print("WARNING: " + text, file=sys.stderr, flush=True)


def spread(values):
    return statistics.median(values), min(values), max(values)


def report(rounds, probe):
    by = {v: [r for r in rounds if r["variant"] == v] for v in VARIANTS}
    print()
    print("Pod creation (scale 0 -> 1) to Ready, %d rounds each, probe: %s" % (len(by["plain"]), probe))
    print()
    print("| variant | median s | min | max |")
    print("|---|---|---|---|")
    medians = {}
    for v in VARIANTS:
        median, low, high = spread([r["seconds"] for r in by[v]])
        medians[v] = median
        print("| %s | %.3f | %.3f | %.3f |" % (v, median, low, high))
    difference = medians["injected"] - medians["plain"]
    print()
    print(
        "Difference of medians (injected - plain): %+.3f s (target: at most %.1f s: %s)"
        % (difference, TARGET_SECONDS, "met" if difference <= TARGET_SECONDS else "NOT met")
    )
    print()
    print("Median seconds from the scale request until the poll saw each phase:")
    print()
    print("| variant | " + " | ".join(key for key, _ in PHASES) + " |")
    print("|---|" + "---|" * len(PHASES))
    for v in VARIANTS:
        cells = []
        for key, _ in PHASES:
            values = [r["phases"][key] for r in by[v] if key in r["phases"]]
            cells.append("%.3f" % statistics.median(values) if values else "-")
        print("| %s | %s |" % (v, " | ".join(cells)))
    steps = [r["step"] for r in by["injected"] if r.get("step")]
    if steps:
        totals = [s["summary"].get("seconds", {}).get("total") for s in steps]
        totals = [t for t in totals if t is not None]
        walls = [s["container_seconds"] for s in steps]
        taken = sum(1 for s in steps if (s["summary"].get("fast_path") or {}).get("taken"))
        print()
        print("The step (injected rounds; fast path taken in %d of %d):" % (taken, len(steps)))
        print()
        print("| step | median s | min | max |")
        print("|---|---|---|---|")
        if totals:
            print("| summary seconds.total | %.3f | %.3f | %.3f |" % spread(totals))
        print("| container finishedAt - startedAt (whole s) | %.1f | %d | %d |" % spread(walls))
    return difference


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds of each variant")
    parser.add_argument("--namespace", default="bench-time-to-ready")
    parser.add_argument("--database", default="bench_time_to_ready", help="dropped and created anew")
    parser.add_argument("--code-image", default=None, help="the webhook image (default: the node tier's)")
    parser.add_argument("--probe", choices=("none", "tcp"), default="none", help="readiness probe of both variants")
    parser.add_argument("--timeout", type=float, default=180, help="seconds a pod may take to be Ready or gone")
    parser.add_argument("--allow-full-path", action="store_true", help="measure on when the fast path is not taken")
    parser.add_argument("--json", metavar="FILE", help="write every round's numbers here")
    args = parser.parse_args()
    check_environment()
    api = Api()
    node = check_node(api)
    ns, database = args.namespace, args.database
    code_image = args.code_image or webhook_image()
    try:
        api.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    except RuntimeError as e:
        if ": 409 " in str(e):
            sys.exit("namespace %s exists: kubectl delete namespace %s (or --namespace)" % (ns, ns))
        raise
    controller = None
    try:
        # The default ServiceAccount must exist before pods are admitted.
        deadline = time.monotonic() + 60
        while not api.request("GET", "/api/v1/namespaces/%s/serviceaccounts" % ns)["items"]:
            if time.monotonic() > deadline:
                sys.exit("no default ServiceAccount in %s after 60 s" % ns)
            time.sleep(0.2)
        psql("DROP DATABASE IF EXISTS %s WITH (FORCE)" % database)
        psql("CREATE DATABASE %s" % database)
        certs = tempfile.mkdtemp(prefix="time-to-ready-")
        subprocess.run([BINARY, "certs", "--out", certs, "--dns", "localhost"], check=True, capture_output=True)
        controller = Controller(ns, certs)
        print("node %s, webhook image %s, controller log %s" % (node, code_image, controller.log), flush=True)
        kubectl_apply(deployment(ns, "plain", database, args.probe, opted_in=False))
        kubectl_apply(inject(deployment(ns, "injected", database, args.probe, opted_in=True), code_image))
        bench = Bench(api, ns, args.timeout, args.allow_full_path)

        # Untimed warm-ups: the injected one migrates the new database and records it.
        warm = {}
        for variant in ("injected", "plain"):
            took, phases, pod = bench.round(variant)
            warm[variant] = {"seconds": took, "phases": phases}
            if variant == "injected":
                info = step(pod)
                check_fast_path(info, args.allow_full_path, warm_up=True)
                warm[variant]["step"] = info
                s = info["summary"]
                print(
                    "warm-up injected: %.2fs to Ready; step: result %s, %s, fast_path %s"
                    % (took, s.get("result"), s.get("message"), json.dumps(s.get("fast_path"))),
                    flush=True,
                )
            else:
                print("warm-up plain: %.2fs to Ready" % took, flush=True)
            bench.down(variant)

        rounds = []
        for i in range(args.rounds):
            for variant in VARIANTS:
                took, phases, pod = bench.round(variant)
                row = {"round": i + 1, "variant": variant, "seconds": took, "phases": phases}
                row["pod_created"] = pod["metadata"]["creationTimestamp"]
                note = ""
                if variant == "injected":
                    info = step(pod)
                    row["step"] = info
                    check_fast_path(info, args.allow_full_path)
                    s = info["summary"]
                    note = "; step %s in %ss (container %ds), fast path taken: %s" % (
                        s.get("result"),
                        (s.get("seconds") or {}).get("total"),
                        info["container_seconds"],
                        (s.get("fast_path") or {}).get("taken"),
                    )
                rounds.append(row)
                print("round %2d %-8s %.3fs to Ready%s" % (i + 1, variant, took, note), flush=True)
                bench.down(variant)
        difference = report(rounds, args.probe)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(
                    {
                        "node": node, "code_image": code_image, "probe": args.probe, "warm_up": warm,
                        "rounds": rounds, "difference_of_medians": difference, "target_seconds": TARGET_SECONDS,
                    },
                    f, indent=1,
                )  # fmt: skip
            print("\nraw numbers: %s" % args.json)
    finally:
        if controller is not None:
            controller.stop()
        subprocess.run(["kubectl", "delete", "namespace", ns, "--wait=false"], capture_output=True)
        with contextlib.suppress(subprocess.CalledProcessError):
            psql("DROP DATABASE IF EXISTS %s WITH (FORCE)" % database)


if __name__ == "__main__":
    main()
