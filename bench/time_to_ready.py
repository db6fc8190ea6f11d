"""Time from pod creation to Ready on a real node: the Django test image's Deployment plain
against the same Deployment injected with each way of delivering the program, nothing
pending. Goals: the injection adds at most 1 s with the code copy, at most 0.75 s with the
image volume.

Three Deployments of localhost/e2e/django:test (the pod of tests/node/main.rs's
django_deployment_with, SLOW_MIGRATION_SECONDS=0, no probe unless --probe tcp, and then the
same probe on all three) in a namespace of their own, all at 0 replicas, one per variant:

  plain        without the opt-in label, not injected;
  copy         the output of `django-migrate-webhook inject --code-image <webhook image>
               --code-image-pull-policy Never --code-delivery copy`: two init containers,
               django-migrate-code (copies the program into an emptyDir), then
               django-migrate (the step);
  imageVolume  the same with --code-delivery imageVolume: one init container,
               django-migrate, reading the program from the image volume
               django-migrate-code (the webhook image, mounted read-only).

The webhook is not in the write path: the manifests are injected before kubectl applies
them. `serve --controller` runs beside the cluster so that the readiness gate of the
injected pods is set. A fresh PostgreSQL database is migrated by the first untimed injected
pod (no record yet: it takes the full path, migrates and writes the fast path's record);
one untimed pod of every other variant warms the node alike. --variants picks some of the
three (default all): a node that cannot mount image volumes (containerd before 2.1, CRI-O
before 1.31 or a kubelet before 1.35; read from the node object) runs `--variants
plain,copy`, and asking for imageVolume there stops before anything is created, naming why.

Then N rounds, interleaved (plain, copy, imageVolume, plain, copy, ...). A round scales
the Deployment from 0 to 1 (the ReplicaSet controller creates the pod, the scheduler binds
it, the kubelet starts it: a scale-out as in production) and times, on a monotonic clock,
from the scale request until a GET of the pod every 50 ms sees its Ready condition True;
then scales back to 0 and waits until the pod is gone. The phases seen on the way (pod
seen, scheduled, initialized, containers ready, gate set) are kept too. After each
injected round it reads the step's summary (the termination message of the
django-migrate init container) and stops the benchmark unless its result is
nothing-pending with fast_path.taken true (--allow-full-path measures on instead), and it
keeps the step's own duration: the summary's seconds.total, and the container's
finishedAt - startedAt (whole seconds). A pod that can never become Ready (an image that
may not be pulled, a container that cannot be created or exits non-zero) stops the
benchmark with its status, the step's log and its events.

Prints a line naming the node's container runtime and kubelet versions (its
status.nodeInfo) and its PLEG: evented when the kubelet's feature gates hold
EventedPLEG=true, else generic. The gates are read from E2E_KUBELET_FEATURE_GATES when it is
set (optional: the node-env file of scripts/kube/start-node.sh writes it), else from the
kubelet's /configz through the API server. Then a markdown table with one row per variant
(median, min, max, and the median's difference from plain's), the differences against the
goals, the medians of the phases and the step's own seconds per injected variant; --json
FILE writes every round with its variant and the runtime, kubelet and PLEG.

    python3 bench/time_to_ready.py --rounds 10 --json time-to-ready.json

Needs: a control plane with a real node and the node tier's images, and PostgreSQL
listening on the node's bridge address. The imageVolume variant needs containerd 2.x on the
node: build-containerd.sh builds containerd and runc from their Go modules (once, cached)
and prints where. From the root of the repository:

    cargo build --release --bin django-migrate-webhook
    IMAGES="pause busybox webhook django" bash scripts/kube/build-images.sh
    WITH_NODE=1 KUBE_VERSION=1.37.2 bash scripts/kube/start-cluster.sh /tmp/ttr-cluster
    CONTAINERD_BIN=$(bash scripts/kube/build-containerd.sh)/bin bash scripts/kube/start-node.sh /tmp/ttr-cluster
    DB_EXTRA_LISTEN=10.244.0.1 DB_EXTRA_CIDR=10.244.0.0/24 bash scripts/databases.sh start /tmp/ttr-db
    source /tmp/ttr-cluster/env; source /tmp/ttr-cluster/node-env; source /tmp/ttr-db/env
    python3 bench/time_to_ready.py

With the evented PLEG, start the node with the feature gate instead:

    CONTAINERD_BIN=$(bash scripts/kube/build-containerd.sh)/bin KUBELET_FEATURE_GATES=EventedPLEG=true \\
        bash scripts/kube/start-node.sh /tmp/ttr-cluster

(to switch, bash scripts/kube/stop-node.sh /tmp/ttr-cluster first, and source its node-env
again). On Debian's containerd 1.6 (start-node.sh without CONTAINERD_BIN) run
`python3 bench/time_to_ready.py --variants plain,copy`.

Afterwards: bash scripts/kube/stop-node.sh /tmp/ttr-cluster; bash
scripts/kube/stop-cluster.sh /tmp/ttr-cluster --purge; bash scripts/databases.sh stop
/tmp/ttr-db. The environment it reads: KUBECONFIG, KUBE_APISERVER_URL, KUBE_CA_FILE,
KUBE_ADMIN_TOKEN and kubectl on PATH (the env file of scripts/kube/start-cluster.sh);
DJANGO_MIGRATE_TEST_POSTGRES_PORT, DJANGO_MIGRATE_TEST_POSTGRES_NODE_HOST,
DJANGO_MIGRATE_TEST_DB_USER and DJANGO_MIGRATE_TEST_DB_PASSWORD (the env file of
scripts/databases.sh start with DB_EXTRA_LISTEN); psql; optionally
E2E_KUBELET_FEATURE_GATES (the node-env file of scripts/kube/start-node.sh).
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
CODE = "django-migrate-code"  # the copy init container, or the image volume
GATE = "django-migrate.io/migrated"
POLL_SECONDS = 0.05
# The variants in the order the rounds interleave them: the baseline first.
PLAIN = "plain"
VARIANTS = (PLAIN, "copy", "imageVolume")
# Each variant's Deployment (a DNS-1123 name) and its --code-delivery (None: not injected).
DEPLOYMENTS = {"plain": "plain", "copy": "copy", "imageVolume": "image-volume"}
DELIVERY = {"plain": None, "copy": "copy", "imageVolume": "imageVolume"}
# Goals: at most this many seconds more than plain (difference of the medians).
GOAL_COPY_SECONDS = 1.0
GOAL_IMAGE_VOLUME_SECONDS = 0.75
GOALS = {"copy": GOAL_COPY_SECONDS, "imageVolume": GOAL_IMAGE_VOLUME_SECONDS}
# The first releases that mount image volumes (as `check` has them).
IMAGE_VOLUME_KUBELET = (1, 35)
IMAGE_VOLUME_RUNTIMES = {"containerd": (2, 1), "cri-o": (1, 31)}
CLUSTER_ENV = ("KUBECONFIG", "KUBE_APISERVER_URL", "KUBE_CA_FILE", "KUBE_ADMIN_TOKEN")
DB_ENV = (
    "DJANGO_MIGRATE_TEST_POSTGRES_PORT",
    "DJANGO_MIGRATE_TEST_POSTGRES_NODE_HOST",
    "DJANGO_MIGRATE_TEST_DB_USER",
    "DJANGO_MIGRATE_TEST_DB_PASSWORD",
)
FEATURE_GATES_ENV = "E2E_KUBELET_FEATURE_GATES"
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
HOW_TO_START_CONTAINERD_2 = (
    "CONTAINERD_BIN=$(bash scripts/kube/build-containerd.sh)/bin bash scripts/kube/start-node.sh DIR"
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


def parse_variants(text):
    """The variants of --variants, in the order the rounds interleave them."""
    asked = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in asked if v not in VARIANTS]
    if unknown or not asked:
        sys.exit("--variants %r: a comma-separated list of %s" % (text, ", ".join(VARIANTS)))
    return [v for v in VARIANTS if v in asked]


def check_node(api):
    """The first Ready node."""
    nodes = api.request("GET", "/api/v1/nodes")["items"]
    ready = [
        n
        for n in nodes
        if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
    ]
    if not ready:
        sys.exit("no Ready node in this cluster: start one with bash scripts/kube/start-node.sh DIR")
    return ready[0]


def version(text):
    """(major, minor) of "v1.37.2", "2.4.2" or "1.6.20~ds1", or None."""
    m = re.match(r"v?(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def node_facts(api, node):
    """The node's runtime and kubelet versions (its status.nodeInfo) and its PLEG."""
    name = node["metadata"]["name"]
    info = node.get("status", {}).get("nodeInfo", {})
    gates, source = os.environ.get(FEATURE_GATES_ENV), FEATURE_GATES_ENV
    if gates is None:
        gates, source = kubelet_feature_gates(api, name), "the kubelet's /configz"
    if gates is None:
        gates, source = "", None
    evented = "eventedpleg=true" in [g.replace(" ", "").lower() for g in gates.split(",")]
    return {
        "node": name,
        "runtime": info.get("containerRuntimeVersion", "?"),
        "kubelet": info.get("kubeletVersion", "?"),
        "pleg": "evented" if evented else "generic",
        "kubelet_feature_gates": gates,
        "feature_gates_from": source,
    }


def kubelet_feature_gates(api, node):
    """The kubelet's feature gates as "Name=true,..." from its /configz, or None."""
    try:
        config = api.request("GET", "/api/v1/nodes/%s/proxy/configz" % node)
    except (RuntimeError, OSError, ValueError):
        return None
    gates = ((config or {}).get("kubeletconfig") or {}).get("featureGates") or {}
    return ",".join("%s=%s" % (k, str(v).lower()) for k, v in sorted(gates.items()))


def facts_line(facts):
    if facts["feature_gates_from"] is None:
        gates = "feature gates unknown: %s not set, the kubelet's /configz not readable" % FEATURE_GATES_ENV
    else:
        gates = "feature gates %s, from %s" % (facts["kubelet_feature_gates"] or "none", facts["feature_gates_from"])
    return "node %s: runtime %s, kubelet %s, PLEG %s (%s)" % (
        facts["node"], facts["runtime"], facts["kubelet"], facts["pleg"], gates,
    )  # fmt: skip


def check_image_volumes(facts):
    """Stops the benchmark when the node cannot mount image volumes, saying why."""
    kind, _, runtime_version = facts["runtime"].partition("://")
    why = []
    least = IMAGE_VOLUME_RUNTIMES.get(kind)
    if least is None:
        why.append("its runtime is %s, neither containerd nor CRI-O" % facts["runtime"])
    elif (version(runtime_version) or (0, 0)) < least:
        why.append(
            "its runtime is %s: %s mounts image volumes from %d.%d on" % (facts["runtime"], kind, least[0], least[1])
        )
    if (version(facts["kubelet"]) or (0, 0)) < IMAGE_VOLUME_KUBELET:
        why.append(
            "its kubelet is %s: image volumes need %d.%d or later (KUBE_VERSION of start-cluster.sh)"
            % (facts["kubelet"], IMAGE_VOLUME_KUBELET[0], IMAGE_VOLUME_KUBELET[1])
        )
    if why:
        sys.exit(
            "the imageVolume variant cannot run on node %s: %s.\n"
            "Run the others: python3 bench/time_to_ready.py --variants plain,copy\n"
            "or restart the node with containerd 2.x: bash scripts/kube/stop-node.sh DIR; %s"
            % (facts["node"], "; ".join(why), HOW_TO_START_CONTAINERD_2)
        )


def warn_pleg(facts):
    """Warns when the evented PLEG is asked of a runtime that sends no container events."""
    kind, _, runtime_version = facts["runtime"].partition("://")
    if facts["pleg"] == "evented" and kind == "containerd" and (version(runtime_version) or (0, 0)) < (1, 7):
        print(
            "WARNING: EventedPLEG=true, but %s sends no CRI container events (1.7 and later do): "
            "the kubelet falls back to the generic PLEG" % facts["runtime"],
            file=sys.stderr,
            flush=True,
        )


def webhook_image():
    """The node tier's webhook image (tests/node/main.rs: fn webhook_image)."""
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        release = re.search(r'^version = "([^"]+)"', f.read(), re.M).group(1)
    return "localhost/e2e/django-migrate-webhook:%s" % release


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


def code_delivery_problem(spec, delivery, code_image):
    """What in an injected pod spec does not match its code delivery, or None."""
    init = [c["name"] for c in spec.get("initContainers") or []]
    volume = next((v for v in spec.get("volumes") or [] if v["name"] == CODE), None)
    if STEP not in init:
        return "no %s init container (init containers: %s)" % (STEP, init)
    if delivery == "copy":
        if init[:2] != [CODE, STEP] or volume is None or "emptyDir" not in volume:
            return "not the code copy: init containers %s, volume %s" % (init, json.dumps(volume))
    elif CODE in init or volume is None or (volume.get("image") or {}).get("reference") != code_image:
        return "not the image volume of %s: init containers %s, volume %s" % (code_image, init, json.dumps(volume))
    return None


def inject(manifest, code_image, delivery):
    out = subprocess.run(
        [
            BINARY, "inject", "-o", "json", "--code-image", code_image, "--code-image-pull-policy", "Never",
            "--code-delivery", delivery,
        ],
        input=json.dumps(manifest).encode(), capture_output=True,
    )  # fmt: skip
    if out.returncode != 0:
        sys.exit(
            "`inject --code-delivery %s` failed (exit %d; a binary without --code-delivery? "
            "cargo build --release --bin django-migrate-webhook): %s"
            % (delivery, out.returncode, out.stderr.decode(errors="replace")[-2000:])
        )
    injected = json.loads(out.stdout)
    problem = code_delivery_problem(injected["spec"]["template"]["spec"], delivery, code_image)
    if problem:
        sys.exit("`inject --code-delivery %s`: %s" % (delivery, problem))
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
    def __init__(self, api, ns, node, timeout, allow_full_path):
        self.api, self.ns, self.node, self.timeout = api, ns, node, timeout
        self.allow_full_path = allow_full_path

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
                    on = pod["spec"].get("nodeName")
                    if on != self.node:
                        sys.exit("%s: the pod ran on node %s, not on %s (the one reported)" % (name, on, self.node))
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
            pod_name = pod["metadata"]["name"]
            print(json.dumps(pod.get("status", {}), indent=1), file=sys.stderr)
            out = subprocess.run(
                ["kubectl", "logs", "-n", self.ns, pod_name, "-c", STEP],
                capture_output=True, text=True,
            )  # fmt: skip
            if out.stdout:
                print("--- %s log:\n%s" % (STEP, out.stdout[-4000:]), file=sys.stderr)
            # An image volume that cannot be mounted shows in the pod's events only.
            selector = urllib.parse.quote("involvedObject.name=%s" % pod_name)
            with contextlib.suppress(RuntimeError, OSError, ValueError):
                events = self.api.request("GET", "/api/v1/namespaces/%s/events?fieldSelector=%s" % (self.ns, selector))
                lines = ["%s %s: %s" % (e.get("type"), e.get("reason"), e.get("message")) for e in events["items"]]
                if lines:
                    print("--- events of %s:\n%s" % (pod_name, "\n".join(lines[-20:])), file=sys.stderr)
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
    """Stops the benchmark unless the step took the fast path (a warm-up only reports)."""
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


def report(rounds, variants, probe, facts):
    """Prints the tables; returns the medians, their differences from plain and the goals."""
    by = {v: [r for r in rounds if r["variant"] == v] for v in variants}
    medians = {v: statistics.median([r["seconds"] for r in by[v]]) for v in variants}
    differences = {v: medians[v] - medians[PLAIN] for v in variants if PLAIN in medians and v != PLAIN}
    print()
    print(facts_line(facts))
    print()
    print("Pod creation (scale 0 -> 1) to Ready, %d rounds each, probe: %s" % (len(by[variants[0]]), probe))
    print()
    print("| variant | median s | min | max | median - plain |")
    print("|---|---|---|---|---|")
    for v in variants:
        median, low, high = spread([r["seconds"] for r in by[v]])
        difference = "%+.3f" % differences[v] if v in differences else "-"
        print("| %s | %.3f | %.3f | %.3f | %s |" % (v, median, low, high, difference))
    goals = {}
    if differences:
        print()
    for v, difference in differences.items():
        met = difference <= GOALS[v]
        goals[v] = {"goal_seconds": GOALS[v], "difference": difference, "met": met}
        print(
            "%s versus plain (difference of medians): %+.3f s (goal: at most %.2f s: %s)"
            % (v, difference, GOALS[v], "met" if met else "NOT met")
        )
    print()
    print("Median seconds from the scale request until the poll saw each phase:")
    print()
    print("| variant | " + " | ".join(key for key, _ in PHASES) + " |")
    print("|---|" + "---|" * len(PHASES))
    for v in variants:
        cells = []
        for key, _ in PHASES:
            values = [r["phases"][key] for r in by[v] if key in r["phases"]]
            cells.append("%.3f" % statistics.median(values) if values else "-")
        print("| %s | %s |" % (v, " | ".join(cells)))
    rows, taken = [], []
    for v in variants:
        steps = [r["step"] for r in by[v] if r.get("step")]
        if not steps:
            continue
        totals = [s["summary"].get("seconds", {}).get("total") for s in steps]
        totals = [t for t in totals if t is not None]
        walls = [s["container_seconds"] for s in steps]
        taken.append(
            "%s %d of %d" % (v, sum(1 for s in steps if (s["summary"].get("fast_path") or {}).get("taken")), len(steps))
        )
        if totals:
            rows.append("| %s | summary seconds.total | %.3f | %.3f | %.3f |" % ((v,) + spread(totals)))
        rows.append("| %s | container finishedAt - startedAt (whole s) | %.1f | %d | %d |" % ((v,) + spread(walls)))
    if rows:
        print()
        print("The step (fast path taken: %s):" % ", ".join(taken))
        print()
        print("| variant | step | median s | min | max |")
        print("|---|---|---|---|---|")
        for row in rows:
            print(row)
    return {"medians": medians, "difference_from_plain": differences, "goals": goals}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds of each variant")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated, of %s (default: all)" % ", ".join(VARIANTS)
    )
    parser.add_argument("--namespace", default="bench-time-to-ready")
    parser.add_argument("--database", default="bench_time_to_ready", help="dropped and created anew")
    parser.add_argument("--code-image", default=None, help="the webhook image (default: the node tier's)")
    parser.add_argument("--probe", choices=("none", "tcp"), default="none", help="readiness probe of every variant")
    parser.add_argument("--timeout", type=float, default=180, help="seconds a pod may take to be Ready or gone")
    parser.add_argument("--allow-full-path", action="store_true", help="measure on when the fast path is not taken")
    parser.add_argument("--json", metavar="FILE", help="write every round's numbers here")
    args = parser.parse_args()
    if args.rounds < 1:
        sys.exit("--rounds must be at least 1")
    variants = parse_variants(args.variants)
    check_environment()
    api = Api()
    facts = node_facts(api, check_node(api))
    print(facts_line(facts), flush=True)
    warn_pleg(facts)
    if "imageVolume" in variants:
        check_image_volumes(facts)
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
        print("webhook image %s, controller log %s" % (code_image, controller.log), flush=True)
        for v in variants:
            name, delivery = DEPLOYMENTS[v], DELIVERY[v]
            manifest = deployment(ns, name, database, args.probe, opted_in=delivery is not None)
            if delivery is None:
                kubectl_apply(manifest)
                continue
            kubectl_apply(inject(manifest, code_image, delivery))
            # An API server without image volumes drops volumes[].image from what it stores.
            stored = api.request("GET", "/apis/apps/v1/namespaces/%s/deployments/%s" % (ns, name))
            problem = code_delivery_problem(stored["spec"]["template"]["spec"], delivery, code_image)
            if problem:
                sys.exit("the API server stored the %s Deployment otherwise: %s" % (v, problem))
        bench = Bench(api, ns, facts["node"], args.timeout, args.allow_full_path)

        # Untimed warm-ups, the injected variants first: the first migrates the new
        # database and records it.
        warm = {}
        for v in sorted(variants, key=lambda v: v == PLAIN):
            name = DEPLOYMENTS[v]
            took, phases, pod = bench.round(name)
            warm[v] = {"seconds": took, "phases": phases}
            if DELIVERY[v] is not None:
                info = step(pod)
                check_fast_path(info, args.allow_full_path, warm_up=True)
                warm[v]["step"] = info
                s = info["summary"]
                print(
                    "warm-up %s: %.2fs to Ready; step: result %s, %s, fast_path %s"
                    % (v, took, s.get("result"), s.get("message"), json.dumps(s.get("fast_path"))),
                    flush=True,
                )
            else:
                print("warm-up %s: %.2fs to Ready" % (v, took), flush=True)
            bench.down(name)

        rounds = []
        for i in range(args.rounds):
            for v in variants:
                took, phases, pod = bench.round(DEPLOYMENTS[v])
                row = {"round": i + 1, "variant": v, "seconds": took, "phases": phases}
                row["pod_created"] = pod["metadata"]["creationTimestamp"]
                note = ""
                if DELIVERY[v] is not None:
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
                print("round %2d %-11s %.3fs to Ready%s" % (i + 1, v, took, note), flush=True)
                bench.down(DEPLOYMENTS[v])
        summary = report(rounds, variants, args.probe, facts)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(
                    dict(
                        facts, code_image=code_image, probe=args.probe, variants=variants, warm_up=warm,
                        rounds=rounds, **summary,
                    ),
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
