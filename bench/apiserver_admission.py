"""Admission as the API server does it: the webhook, the floor and policy mode, in one run.

Three contenders, each selecting a namespace of its own:

- webhook: the webhook (`serve`), registered as a MutatingWebhookConfiguration;
- floor: bench/floor_server.rs (parses the body, reads uid and operation, answers with the
  patch the webhook gives for this Deployment, prepared before the run), registered the same;
- policy: the admission policies of `django-migrate-webhook policy` (a
  MutatingAdmissionPolicy, two ValidatingAdmissionPolicies and their bindings), bound to
  its namespace only; the API server evaluates them itself, no server of ours is called.

For each, in alternating rounds, a storm through the API server of $KUBECONFIG: 500 creates
of opted-in Deployments and 500 image updates of them, from 16 clients. Measured the same
way for all three: the latency of each create and each update as the client sees it (mean,
p50, p90, p99), the kube-apiserver's CPU seconds (utime + stime of its /proc/PID/stat,
before and after the storm) per request, and the Deployments the storm left not injected
(or whose update lost the injection or did not carry the new image into the step). For
the two webhooks also their server's own CPU, and, as before, the API server's own
`apiserver_admission_webhook_admission_duration_seconds` for each webhook: the mean
(`_sum` / `_count`) and the share in the lowest bucket (5 ms), with the rejections.

The API server's CPU counts whatever else it does meanwhile: a kube-controller-manager, if
one runs, creates the ReplicaSets of the new Deployments at its own pace (its client is
rate-limited, so it is still at it long after a storm), in namespaces no contender selects.
The bench measures that background right after each storm, over --background seconds, and
also prints the API server's CPU less the background for the length of the storm.

    python3 bench/apiserver_admission.py [--creates 500] [--clients 16] [--rounds 4]
        [--apiserver-pid $STATE_DIR/pids/kube-apiserver.pid]

Needs: the env file of scripts/kube/start-cluster.sh (KUBECONFIG, KUBE_APISERVER_URL,
KUBE_CA_FILE, KUBE_ADMIN_TOKEN; the API server's pid file is next to $KUBECONFIG), an API
server that serves admissionregistration.k8s.io/v1 admission policies (Kubernetes 1.36 and
later), and release builds:
cargo build --release --bin django-migrate-webhook --example floor-server
"""

import argparse
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from controller import Api, cpu_seconds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "django-migrate-webhook")
FLOOR = os.path.join(ROOT, "target", "release", "examples", "floor-server")
EXAMPLE = os.path.join(ROOT, "examples", "django-deployment.yaml")
METRIC = "apiserver_admission_webhook_admission_duration_seconds"
INIT = ["django-migrate-code", "django-migrate"]
NEW_IMAGE = "registry.example/shop:2"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_EXAMPLE = []


def example(namespace, name, image=None):
    """The example Deployment (examples/django-deployment.yaml), opted in, without its replicas (no pods needed)."""
    if not _EXAMPLE:
        out = subprocess.run(
            ["kubectl", "create", "--dry-run=client", "-o", "json", "-f", EXAMPLE], check=True, capture_output=True
        )
        _EXAMPLE.append(out.stdout)
    d = json.loads(_EXAMPLE[0])
    d["metadata"] = {
        "name": name,
        "namespace": namespace,
        "labels": {**d["metadata"].get("labels", {}), "django-migrate.io/inject": "true"},
    }
    d["spec"]["replicas"] = 0
    if image:
        d["spec"]["template"]["spec"]["containers"][0]["image"] = image
    return d


def review(operation, obj, old=None):
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "prepared",
            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "operation": operation,
            "object": obj,
            "oldObject": old,
        },
    }


def injected(obj):
    out = subprocess.run(
        [BINARY, "inject", "-o", "json", "-f", "-"], input=json.dumps(obj).encode(), check=True, capture_output=True
    )
    return json.loads(out.stdout)


def register(name, url, ca_bundle, selector):
    config = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": name + ".bench.django-migrate.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "timeoutSeconds": 5,
                "reinvocationPolicy": "Never",
                "clientConfig": {"url": url, "caBundle": ca_bundle},
                "rules": [
                    {
                        "apiGroups": ["apps"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["deployments"],
                    }
                ],
                "objectSelector": {"matchLabels": {"django-migrate.io/inject": "true"}},
                "namespaceSelector": {"matchLabels": {"bench-webhook": selector}},
            }
        ],
    }
    subprocess.run(["kubectl", "apply", "-f", "-"], input=json.dumps(config).encode(), check=True, capture_output=True)


def policies(name, namespace):
    """The objects of `policy` (a v1 List), each binding limited to `namespace`."""
    out = subprocess.run([BINARY, "policy", "-o", "json", "--name", name], check=True, capture_output=True)
    objects = json.loads(out.stdout)
    for item in objects["items"]:
        if item["kind"].endswith("Binding"):
            item["spec"]["matchResources"]["namespaceSelector"] = {
                "matchLabels": {"kubernetes.io/metadata.name": namespace}
            }
    return objects


def policies_effective(namespace):
    """A server-side dry run comes back injected and warned about, and a bad setting is
    denied: each kind of policy is loaded (as tests/support/parity.rs waits)."""
    probe = subprocess.run(
        ["kubectl", "apply", "--dry-run=server", "-o", "json", "-f", "-"],
        input=json.dumps(example(namespace, "probe")).encode(),
        capture_output=True,
    )
    try:
        stored = json.loads(probe.stdout)
    except ValueError:
        return False
    init = [c["name"] for c in stored["spec"]["template"]["spec"].get("initContainers", [])]
    warned = "injected init containers" in probe.stderr.decode()
    bad = example(namespace, "probe")
    bad["metadata"]["annotations"] = {"django-migrate.io/mode": "fast"}
    denied = subprocess.run(
        ["kubectl", "apply", "--dry-run=server", "-f", "-"], input=json.dumps(bad).encode(), capture_output=True
    )
    return init == INIT and warned and denied.returncode != 0


def webhook_series(api, webhook):
    text = api.raw("/metrics")
    series = {}
    for line in text.splitlines():
        if line.startswith("apiserver_admission_webhook_") and 'name="%s"' % webhook in line:
            key, value = line.rsplit(" ", 1)
            series[key] = float(value)
    return series


def delta(before, after, pattern):
    regex = re.compile(pattern)
    return sum(v - before.get(k, 0.0) for k, v in after.items() if regex.search(k))


def init_containers(obj):
    return obj["spec"]["template"]["spec"].get("initContainers") or []


def storm(api, pool, namespace, creates, round_):
    """Creates, then image updates, of `creates` Deployments; each request's latency."""
    names = ["d-%d-%03d" % (round_, i) for i in range(creates)]
    failures = []

    def create(name):
        started = time.perf_counter()
        try:
            obj = api.request("POST", "/apis/apps/v1/namespaces/%s/deployments" % namespace, example(namespace, name))
        except RuntimeError as e:
            failures.append((name, str(e)[:200]))
            return None
        took = time.perf_counter() - started
        init = [c["name"] for c in init_containers(obj)]
        if init != INIT:
            failures.append((name, "stored with init containers %s" % init))
        return took

    def update(name):
        patch = {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": NEW_IMAGE}]}}}}
        started = time.perf_counter()
        try:
            obj = api.request(
                "PATCH",
                "/apis/apps/v1/namespaces/%s/deployments/%s" % (namespace, name),
                patch,
                "application/strategic-merge-patch+json",
            )
        except RuntimeError as e:
            failures.append((name, str(e)[:200]))
            return None
        took = time.perf_counter() - started
        init = init_containers(obj)
        if [c["name"] for c in init] != INIT or init[1].get("image") != NEW_IMAGE:
            failures.append((name, "updated to init containers %s" % [(c["name"], c.get("image")) for c in init]))
        return took

    started = time.monotonic()
    create_latencies = [t for t in pool.map(create, names) if t is not None]
    update_latencies = [t for t in pool.map(update, names) if t is not None]
    return time.monotonic() - started, create_latencies, update_latencies, failures


def percentile(values, p):
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered))) - 1))]


def latency(values):
    if not values:
        return "— | — | — | —"
    ms = [1000 * v for v in values]
    return "%.1f | %.1f | %.1f | %.1f" % (
        sum(ms) / len(ms),
        percentile(ms, 50),
        percentile(ms, 90),
        percentile(ms, 99),
    )


def default_apiserver_pid_file():
    """scripts/kube/start-cluster.sh writes $STATE_DIR/pids/kube-apiserver.pid, its
    kubeconfig at $STATE_DIR/kubeconfig."""
    kubeconfig = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    return os.path.join(os.path.dirname(kubeconfig) or ".", "pids", "kube-apiserver.pid")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--creates", type=int, default=500)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per contender")
    parser.add_argument(
        "--apiserver-pid",
        default=default_apiserver_pid_file(),
        help="file with the kube-apiserver's PID (default: pids/kube-apiserver.pid next to $KUBECONFIG)",
    )
    parser.add_argument(
        "--background", type=float, default=3, help="seconds after each storm to measure the API server's other work"
    )
    args = parser.parse_args()
    for binary in (BINARY, FLOOR):
        if not os.access(binary, os.X_OK):
            sys.exit("%s missing: cargo build --release --bin django-migrate-webhook --example floor-server" % binary)
    try:
        apiserver = int(open(args.apiserver_pid).read().strip())
        cpu_seconds(apiserver)
    except (OSError, ValueError) as e:
        sys.exit("cannot read the kube-apiserver's CPU time (--apiserver-pid %s): %s" % (args.apiserver_pid, e))
    api = Api()
    work = tempfile.mkdtemp(prefix="apiserver-admission-")
    subprocess.run([BINARY, "certs", "--out", work, "--ip", "127.0.0.1"], check=True, capture_output=True)
    ca_bundle = base64.b64encode(open(os.path.join(work, "ca.crt"), "rb").read()).decode()
    # The floor's answers, prepared from the webhook's own for this Deployment.
    sample = example("x", "sample")
    old = injected(sample)
    new = json.loads(json.dumps(old))
    new["spec"]["template"]["spec"]["containers"][0]["image"] = NEW_IMAGE
    for name, body in (("create", review("CREATE", sample)), ("update", review("UPDATE", new, old))):
        with open(os.path.join(work, name + ".json"), "w") as f:
            json.dump(body, f)
    crt, key = os.path.join(work, "tls.crt"), os.path.join(work, "tls.key")
    ours_port, floor_port = free_port(), free_port()
    servers = {
        "webhook": subprocess.Popen(
            [BINARY, "serve", "--listen", "127.0.0.1:%d" % ours_port, "--metrics-listen", "127.0.0.1:%d" % free_port(),
             "--tls-cert", crt, "--tls-key", key, "--shutdown-delay", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ),
        "floor": subprocess.Popen(
            [FLOOR, "127.0.0.1:%d" % floor_port, crt, key,
             os.path.join(work, "create.json"), os.path.join(work, "update.json")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ),
    }  # fmt: skip
    suffix = os.getpid()
    webhooks = {
        "webhook": ("bench-ours-%d" % suffix, "https://127.0.0.1:%d/mutate" % ours_port),
        "floor": ("bench-floor-%d" % suffix, "https://127.0.0.1:%d/admission" % floor_port),
    }
    policy_name = "bench-policy-%d" % suffix
    namespaces = {label: name for label, (name, _) in webhooks.items()}
    namespaces["policy"] = policy_name
    policy_objects = policies(policy_name, policy_name)
    pool = ThreadPoolExecutor(args.clients)  # one keep-alive connection per client, for the whole run
    try:
        for label, name in namespaces.items():
            if label in webhooks:
                register(name, webhooks[label][1], ca_bundle, label)
            api.request(
                "POST",
                "/api/v1/namespaces",
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": name, "labels": {"bench-webhook": label}},
                },
            )
        applied = subprocess.run(
            ["kubectl", "apply", "-f", "-"], input=json.dumps(policy_objects).encode(), capture_output=True
        )
        if applied.returncode != 0:
            sys.exit(
                "cannot create the admission policies (admissionregistration.k8s.io/v1 is served from "
                "Kubernetes 1.36): %s" % applied.stderr.decode().strip()
            )
        # Effective once a dry run comes back injected; a few applies warm each up.
        for label, name in namespaces.items():
            deadline = time.monotonic() + 60
            while True:
                if label == "policy":
                    if policies_effective(name):
                        break
                else:
                    try:
                        obj = api.request(
                            "POST", "/apis/apps/v1/namespaces/%s/deployments?dryRun=All" % name, example(name, "probe")
                        )
                        if init_containers(obj):
                            break
                    except RuntimeError:
                        pass
                if time.monotonic() > deadline:
                    sys.exit("the %s configuration did not take effect" % label)
                time.sleep(0.5)
            storm(api, pool, name, 20, 99)
        results = {
            label: {
                "calls": 0, "sum": 0.0, "fast": 0.0, "rejected": 0, "non200": 0, "failed": 0, "seconds": 0.0,
                "creates": [], "updates": [], "apiserver_cpu": 0.0, "background": 0.0, "server_cpu": 0.0,
            }
            for label in namespaces
        }  # fmt: skip
        for round_ in range(args.rounds):
            for label, name in namespaces.items():
                hook = name + ".bench.django-migrate.io"
                before = webhook_series(api, hook) if label in webhooks else {}
                server = servers.get(label)
                server_before = cpu_seconds(server.pid) if server else 0.0
                apiserver_before = cpu_seconds(apiserver)
                seconds, creates, updates, failures = storm(api, pool, name, args.creates, round_)
                apiserver_after = cpu_seconds(apiserver)
                server_after = cpu_seconds(server.pid) if server else 0.0
                after = webhook_series(api, hook) if label in webhooks else {}
                r = results[label]
                r["calls"] += delta(before, after, "^%s_count\\{" % METRIC)
                r["sum"] += delta(before, after, "^%s_sum\\{" % METRIC)
                r["fast"] += delta(before, after, '^%s_bucket\\{.*le="0.005"' % METRIC)
                r["rejected"] += delta(before, after, "^apiserver_admission_webhook_rejection_count\\{")
                r["non200"] += delta(before, after, '^apiserver_admission_webhook_request_total\\{(?!.*code="200")')
                r["failed"] += len(failures)
                r["seconds"] += seconds
                r["creates"] += creates
                r["updates"] += updates
                r["apiserver_cpu"] += apiserver_after - apiserver_before
                r["server_cpu"] += server_after - server_before
                if failures:
                    print("%s: %d applies failed, e.g. %s" % (label, len(failures), failures[:2]))
                # What the API server does without a storm (a controller-manager catching up), per second.
                time.sleep(args.background)
                background = (cpu_seconds(apiserver) - apiserver_after) / args.background
                r["background"] += background * seconds
                print(
                    "round %d, %s: %d requests in %.1fs, API server CPU %.2fs (background %.2f of a core)"
                    % (round_ + 1, label, 2 * args.creates, seconds, apiserver_after - apiserver_before, background),
                    flush=True,
                )
        print()
        print("| webhook | API server calls | mean | ≤ 5 ms | rejected | non-200 | failed applies | storm time |")
        print("|---|---|---|---|---|---|---|---|")
        for label in webhooks:
            r = results[label]
            mean, fast = 1000 * r["sum"] / r["calls"], 100 * r["fast"] / r["calls"]
            print(
                "| %s | %d | %.2f ms | %.1f%% | %d | %d | %d | %.1f s |"
                % (label, r["calls"], mean, fast, r["rejected"], r["non200"], r["failed"], r["seconds"])
            )
        ours, floor = results["webhook"], results["floor"]
        mean_gap = 1000 * (ours["sum"] / ours["calls"] - floor["sum"] / floor["calls"])
        print(
            "\nmean %+.2f ms against the floor (target within 1 ms); ≤ 5 ms share %.1f%% vs %.1f%% (target: no lower)"
            % (mean_gap, 100 * ours["fast"] / ours["calls"], 100 * floor["fast"] / floor["calls"])
        )
        requests = args.rounds * args.creates
        print(
            "\nEnd to end, as the clients see it (%d clients, %d creates and %d updates per contender, %d rounds); "
            "latencies in ms, CPU per request (create or update); the API server's less its background over the "
            "storm's length:\n" % (args.clients, requests, requests, args.rounds)
        )
        print(
            "| contender | create mean | p50 | p90 | p99 | update mean | p50 | p90 | p99 "
            "| API server CPU | less background | server CPU | failures | storm time |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for label, r in results.items():
            n = 2 * requests
            server = "%.2f ms" % (1000 * r["server_cpu"] / n) if label in servers else "—"
            print(
                "| %s | %s | %s | %.2f ms | %.2f ms | %s | %d | %.1f s |"
                % (label, latency(r["creates"]), latency(r["updates"]), 1000 * r["apiserver_cpu"] / n,
                   1000 * (r["apiserver_cpu"] - r["background"]) / n, server, r["failed"], r["seconds"])
            )  # fmt: skip
    finally:
        pool.shutdown()
        for p in servers.values():
            p.terminate()
            p.wait(timeout=30)
        for name, _ in webhooks.values():
            subprocess.run(
                ["kubectl", "delete", "mutatingwebhookconfiguration", name, "--ignore-not-found"], capture_output=True
            )
        subprocess.run(
            ["kubectl", "delete", "--ignore-not-found", "-f", "-"],
            input=json.dumps(policy_objects).encode(),
            capture_output=True,
        )
        for name in namespaces.values():
            subprocess.run(["kubectl", "delete", "namespace", name, "--wait=false"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
