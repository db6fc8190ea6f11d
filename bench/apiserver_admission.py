"""Admission latency as the API server sees it: the webhook against the floor, in one run.

Registers the webhook (`serve`) and the floor (bench/floor_server.rs: parses the body, reads
uid and operation, answers with the patch the webhook gives for this Deployment, prepared
before the run) with the API server of $KUBECONFIG as two MutatingWebhookConfigurations,
each selecting a namespace of its own. Then, for each, a storm through the API server: 500
creates of opted-in Deployments and 500 image updates of them, from 16 clients. It reads the
API server's own `apiserver_admission_webhook_admission_duration_seconds` for each webhook
before and after its storm and compares the mean (`_sum` / `_count`) and the share in the
lowest bucket (5 ms), with the rejections and the failed applies.

    python3 bench/apiserver_admission.py [--creates 500] [--clients 16] [--rounds 4]

Needs: the env file of scripts/kube/start-cluster.sh (KUBECONFIG, KUBE_APISERVER_URL,
KUBE_CA_FILE, KUBE_ADMIN_TOKEN) and release builds:
cargo build --release --bin django-migrate-webhook --example floor-server
"""

import argparse
import base64
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from controller import Api

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "django-migrate-webhook")
FLOOR = os.path.join(ROOT, "target", "release", "examples", "floor-server")
EXAMPLE = os.path.join(ROOT, "examples", "django-deployment.yaml")
METRIC = "apiserver_admission_webhook_admission_duration_seconds"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_EXAMPLE = []


def example(namespace, name, image=None):
    """The README's example Deployment, opted in, without its replicas (no pods needed)."""
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


def storm(api, namespace, creates, clients, round_):
    names = ["d-%d-%03d" % (round_, i) for i in range(creates)]
    failures = []

    def create(name):
        try:
            obj = api.request("POST", "/apis/apps/v1/namespaces/%s/deployments" % namespace, example(namespace, name))
            if not obj["spec"]["template"]["spec"].get("initContainers"):
                failures.append((name, "stored without the injection"))
        except RuntimeError as e:
            failures.append((name, str(e)[:200]))

    def update(name):
        patch = {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "registry.example/shop:2"}]}}}}
        try:
            api.request(
                "PATCH",
                "/apis/apps/v1/namespaces/%s/deployments/%s" % (namespace, name),
                patch,
                "application/strategic-merge-patch+json",
            )
        except RuntimeError as e:
            failures.append((name, str(e)[:200]))

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(create, names))
        list(pool.map(update, names))
    return time.monotonic() - started, failures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--creates", type=int, default=500)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per webhook")
    args = parser.parse_args()
    for binary in (BINARY, FLOOR):
        if not os.access(binary, os.X_OK):
            sys.exit("%s missing: cargo build --release --bin django-migrate-webhook --example floor-server" % binary)
    api = Api()
    work = tempfile.mkdtemp(prefix="apiserver-admission-")
    subprocess.run([BINARY, "certs", "--out", work, "--ip", "127.0.0.1"], check=True, capture_output=True)
    ca_bundle = base64.b64encode(open(os.path.join(work, "ca.crt"), "rb").read()).decode()
    # The floor's answers, prepared from the webhook's own for this Deployment.
    sample = example("x", "sample")
    old = injected(sample)
    new = json.loads(json.dumps(old))
    new["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.example/shop:2"
    for name, body in (("create", review("CREATE", sample)), ("update", review("UPDATE", new, old))):
        with open(os.path.join(work, name + ".json"), "w") as f:
            json.dump(body, f)
    crt, key = os.path.join(work, "tls.crt"), os.path.join(work, "tls.key")
    ours_port, floor_port = free_port(), free_port()
    processes = [
        subprocess.Popen(
            [BINARY, "serve", "--listen", "127.0.0.1:%d" % ours_port, "--metrics-listen", "127.0.0.1:%d" % free_port(),
             "--tls-cert", crt, "--tls-key", key, "--shutdown-delay", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [FLOOR, "127.0.0.1:%d" % floor_port, crt, key,
             os.path.join(work, "create.json"), os.path.join(work, "update.json")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ),
    ]  # fmt: skip
    suffix = os.getpid()
    webhooks = {
        "webhook": ("bench-ours-%d" % suffix, "https://127.0.0.1:%d/mutate" % ours_port),
        "floor": ("bench-floor-%d" % suffix, "https://127.0.0.1:%d/admission" % floor_port),
    }
    try:
        for label, (name, url) in webhooks.items():
            register(name, url, ca_bundle, label)
            api.request(
                "POST",
                "/api/v1/namespaces",
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": name, "labels": {"bench-webhook": label}},
                },
            )
        # Effective once a dry run comes back injected; a few applies warm both up.
        for label, (name, _) in webhooks.items():
            deadline = time.monotonic() + 30
            while True:
                try:
                    obj = api.request(
                        "POST", "/apis/apps/v1/namespaces/%s/deployments?dryRun=All" % name, example(name, "probe")
                    )
                    if obj["spec"]["template"]["spec"].get("initContainers"):
                        break
                except RuntimeError:
                    pass
                if time.monotonic() > deadline:
                    sys.exit("the %s configuration did not take effect" % label)
                time.sleep(0.5)
            storm(api, name, 20, args.clients, 99)
        results = {
            label: {"calls": 0, "sum": 0.0, "fast": 0.0, "rejected": 0, "non200": 0, "failed": 0, "seconds": 0.0}
            for label in webhooks
        }
        for round_ in range(args.rounds):
            for label, (name, _) in webhooks.items():
                hook = name + ".bench.django-migrate.io"
                before = webhook_series(api, hook)
                seconds, failures = storm(api, name, args.creates, args.clients, round_)
                after = webhook_series(api, hook)
                r = results[label]
                r["calls"] += delta(before, after, "^%s_count\\{" % METRIC)
                r["sum"] += delta(before, after, "^%s_sum\\{" % METRIC)
                r["fast"] += delta(before, after, '^%s_bucket\\{.*le="0.005"' % METRIC)
                r["rejected"] += delta(before, after, "^apiserver_admission_webhook_rejection_count\\{")
                r["non200"] += delta(before, after, '^apiserver_admission_webhook_request_total\\{(?!.*code="200")')
                r["failed"] += len(failures)
                r["seconds"] += seconds
                if failures:
                    print("%s: %d applies failed, e.g. %s" % (label, len(failures), failures[:2]))
                print("round %d, %s: %d requests in %.1fs" % (round_ + 1, label, 2 * args.creates, seconds), flush=True)
        print()
        print("| webhook | API server calls | mean | ≤ 5 ms | rejected | non-200 | failed applies | storm time |")
        print("|---|---|---|---|---|---|---|---|")
        for label, r in results.items():
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
    finally:
        for p in processes:
            p.terminate()
            p.wait(timeout=30)
        for name, _ in webhooks.values():
            subprocess.run(
                ["kubectl", "delete", "mutatingwebhookconfiguration", name, "--ignore-not-found"], capture_output=True
            )
            subprocess.run(["kubectl", "delete", "namespace", name, "--wait=false"], capture_output=True)


if __name__ == "__main__":
    main()
