"""The readiness-gate controller against a real API server at growing numbers of pods.

Starts `django-migrate-webhook serve --controller` against the cluster of $KUBECONFIG
(the test control plane of scripts/kube/: no kubelet is needed), creates injected pods
(the pod template that `inject` makes of examples/django-deployment.yaml) up to each size,
plays the kubelet by patching each pod's status to "migration step finished" with a
realistic summary, waits until the controller has set the gate condition on every pod,
and reports the controller's RSS (idle, at each size, per pod) and how long gating took.

    python3 bench/controller.py --sizes 1000,2000,4000

Needs: KUBECONFIG, KUBE_APISERVER_URL, KUBE_CA_FILE and KUBE_ADMIN_TOKEN (the env file of
scripts/kube/start-cluster.sh) and a release build of the binary.
"""

import argparse
import copy
import http.client
import json
import os
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "django-migrate-webhook")
GATE = "django-migrate.io/migrated"
CONNECTIONS = 8


class Api:
    """A minimal API client, one keep-alive connection per thread."""

    def __init__(self):
        url = urllib.parse.urlparse(os.environ["KUBE_APISERVER_URL"])
        self.host, self.port = url.hostname, url.port
        self.token = os.environ["KUBE_ADMIN_TOKEN"]
        self.context = ssl.create_default_context(cafile=os.environ["KUBE_CA_FILE"])
        self.local = threading.local()

    def request(self, method, path, body=None, content_type="application/json"):
        for attempt in range(5):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=60)
                self.local.conn = conn
            headers = {"Authorization": "Bearer " + self.token, "Accept": "application/json"}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = content_type
            try:
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                if attempt == 4:
                    raise
                continue
            if response.status == 429 or response.status >= 500:
                time.sleep(0.2 * (attempt + 1))
                continue
            if response.status >= 300:
                raise RuntimeError("%s %s: %d %s" % (method, path, response.status, payload[:300]))
            return json.loads(payload) if payload else None
        raise RuntimeError("%s %s: gave up" % (method, path))


def injected_pod_template():
    """The pod template `inject` makes of the README's example Deployment."""
    out = subprocess.run(
        [BINARY, "inject", "-o", "json", "-f", os.path.join(ROOT, "examples", "django-deployment.yaml")],
        check=True,
        capture_output=True,
    ).stdout
    return json.loads(out)["spec"]["template"]


def summary_message(i):
    return json.dumps(
        {
            "mode": "migrate",
            "phase": "done",
            "result": "nothing-pending" if i % 50 else "applied",
            "exit_code": 0,
            "message": "nothing to apply (0.4s)" if i % 50 else "applied 2 migrations: shop.0041_a, shop.0042_b",
            "applied": [] if i % 50 else ["shop.0041_a", "shop.0042_b"],
            "pending": [],
            "failed_migration": None,
            "seconds": {"total": 0.41, "database": 0.01, "lock_wait": 0.0, "migrate": 0.0},
            "retries": 0,
            "unsafe_operations": [],
        },
        separators=(",", ":"),
    )


def kubelet_status(pod, i):
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    terminated = {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}

    def status(name, image, state):
        return {"name": name, "image": image, "imageID": "", "ready": False, "restartCount": 0, "state": state}

    init = pod["spec"]["initContainers"]
    return {
        "status": {
            "phase": "Running",
            "initContainerStatuses": [
                status(init[0]["name"], init[0]["image"], {"terminated": terminated}),
                status(init[1]["name"], init[1]["image"], {"terminated": dict(terminated, message=summary_message(i))}),
            ],
        }
    }


def rss_kib(pid):
    fields = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def gated(api, namespace):
    selector = "labelSelector=django-migrate.io%2Finjected%3Dtrue"
    pods = api.request("GET", "/api/v1/namespaces/%s/pods?%s" % (namespace, selector))
    done = 0
    for pod in pods["items"]:
        for c in pod.get("status", {}).get("conditions", []) or []:
            if c["type"] == GATE and c["status"] == "True":
                done += 1
    return done, len(pods["items"])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,2000,4000", help="cumulative numbers of pods")
    parser.add_argument("--namespace", default="bench-controller")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    api = Api()
    ns = args.namespace
    api.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    template = injected_pod_template()
    log = tempfile.NamedTemporaryFile(prefix="controller-", suffix=".log", delete=False)
    server_dir = tempfile.mkdtemp(prefix="controller-bench-")
    subprocess.run([BINARY, "certs", "--out", server_dir, "--dns", "localhost"], check=True, capture_output=True)
    controller = subprocess.Popen(
        [
            BINARY, "serve", "--controller", "--lease-namespace", ns, "--identity", "bench",
            "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
            "--tls-cert", os.path.join(server_dir, "tls.crt"), "--tls-key", os.path.join(server_dir, "tls.key"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    rows = []
    try:
        deadline = time.monotonic() + 60
        while "holding the lease" not in open(log.name).read():
            if time.monotonic() > deadline or controller.poll() is not None:
                sys.exit("the controller did not take the lease:\n" + open(log.name).read())
            time.sleep(0.2)
        time.sleep(3)
        idle, _ = rss_kib(controller.pid)
        print("controller idle RSS: %.1f MiB" % (idle / 1024), flush=True)
        created = 0
        pool = ThreadPoolExecutor(CONNECTIONS)
        for size in sizes:
            names = ["web-%05d" % i for i in range(created, size)]

            def create(name, i):
                pod = copy.deepcopy(template)
                pod["metadata"]["name"] = name
                body = {"apiVersion": "v1", "kind": "Pod", "metadata": pod["metadata"], "spec": pod["spec"]}
                made = api.request("POST", "/api/v1/namespaces/%s/pods" % ns, body)
                patch = kubelet_status(made, i)
                api.request(
                    "PATCH",
                    "/api/v1/namespaces/%s/pods/%s/status" % (ns, name),
                    patch,
                    "application/strategic-merge-patch+json",
                )

            cpu_before = cpu_seconds(controller.pid)
            started = time.monotonic()
            list(pool.map(create, names, range(created, size)))
            created = size
            while True:
                done, total = gated(api, ns)
                if done >= size:
                    break
                time.sleep(0.5)
            took = time.monotonic() - started
            time.sleep(3)
            rss, hwm = rss_kib(controller.pid)
            cpu = cpu_seconds(controller.pid) - cpu_before
            rows.append((size, rss, hwm, took, cpu))
            print(
                "%6d pods: all gated %.1fs after the first was created; RSS %.1f MiB (peak %.1f MiB), "
                "%.2f KiB per pod over idle; controller CPU %.1fs"
                % (size, took, rss / 1024, hwm / 1024, (rss - idle) / size, cpu),
                flush=True,
            )
        if len(rows) >= 2:
            xs = [r[0] for r in rows]
            ys = [r[1] for r in rows]
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
            print("RSS growth per watched pod (least-squares fit): %.2f KiB (target at most 2 KiB)" % slope)
    finally:
        controller.terminate()
        controller.wait(timeout=30)
        subprocess.run(["kubectl", "delete", "namespace", ns, "--wait=false"], capture_output=True)


if __name__ == "__main__":
    main()
