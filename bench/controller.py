"""The readiness-gate controller against a real API server at 1,000, 5,000 and 10,000 pods,
side by side with a floor.

Against the cluster of $KUBECONFIG (the test control plane of scripts/kube/: no kubelet is
needed), for each size: creates the new injected pods (the pod template `inject` makes of
examples/django-deployment.yaml; the controller marks them pending), stops the controller,
plays the kubelet by patching each new pod's status to "migration step finished" with a
realistic summary, starts the controller and measures the time until every pod carries
the condition (its start, lease and list included), its RSS (after, and peak), its CPU
seconds and the API requests it made (its own counter, by method). Then it restarts the
controller once more and counts the patches of a controller that finds everything right
(target 0), and runs the floor: bench/gate_floor.rs sets the same condition on the same
pods itself with 8 requests in flight, as fast as the API server accepts them.

    python3 bench/controller.py --sizes 1000,5000,10000

Needs: KUBECONFIG, KUBE_APISERVER_URL, KUBE_CA_FILE and KUBE_ADMIN_TOKEN (the env file of
scripts/kube/start-cluster.sh) and release builds:
cargo build --release --bin django-migrate-webhook --example gate-floor
"""

import argparse
import copy
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "django-migrate-webhook")
FLOOR = os.path.join(ROOT, "target", "release", "examples", "gate-floor")
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

    def raw(self, path):
        """GET a non-JSON path (e.g. /metrics) as text."""
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=60)
        try:
            conn.request("GET", path, headers={"Authorization": "Bearer " + self.token})
            response = conn.getresponse()
            if response.status != 200:
                raise RuntimeError("GET %s: %d" % (path, response.status))
            return response.read().decode()
        finally:
            conn.close()

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
    """The pod template `inject` makes of the example Deployment (examples/django-deployment.yaml)."""
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
    done = conditioned = 0
    for pod in pods["items"]:
        for c in pod.get("status", {}).get("conditions", []) or []:
            if c["type"] == GATE:
                conditioned += 1
                done += c["status"] == "True"
    return done, conditioned, len(pods["items"])


def wait_until(what, check, timeout=900):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            sys.exit("timed out waiting for " + what)
        time.sleep(0.2)


class Controller:
    """`serve --controller` on free ports, its log in a file."""

    def __init__(self, ns, certs):
        self.ns, self.certs = ns, certs
        self.admin = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="controller-", suffix=".log", delete=False).name
        self.process = subprocess.Popen(
            [
                BINARY, "serve", "--controller", "--lease-namespace", ns, "--identity", "bench",
                "--listen", "127.0.0.1:%d" % free_port(), "--metrics-listen", "127.0.0.1:%d" % self.admin,
                "--shutdown-delay", "0",
                "--tls-cert", os.path.join(certs, "tls.crt"), "--tls-key", os.path.join(certs, "tls.key"),
            ],
            stdout=open(self.log, "w"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_until("the controller to take the lease", lambda: "holding the lease" in open(self.log).read(), 60)

    def requests(self):
        """API requests by method, from its own counter."""
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.admin, timeout=10) as r:
            text = r.read().decode()
        counts = {}
        for line in text.splitlines():
            if line.startswith("django_migrate_controller_api_requests_total{"):
                method = line.split('method="')[1].split('"')[0]
                resource = line.split('resource="')[1].split('"')[0]
                counts["%s %s" % (method, resource)] = int(float(line.rsplit(" ", 1)[1]))
        return counts

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=60)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def floor(ns, message):
    out = subprocess.run([FLOOR, ns, message], check=True, capture_output=True, text=True).stdout.split()
    return int(out[0]), float(out[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,5000,10000", help="cumulative numbers of pods")
    parser.add_argument("--namespace", default="bench-controller")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    for binary in (BINARY, FLOOR):
        if not os.access(binary, os.X_OK):
            sys.exit("%s missing: cargo build --release --bin django-migrate-webhook --example gate-floor" % binary)
    api = Api()
    ns = args.namespace
    api.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    template = injected_pod_template()
    certs = tempfile.mkdtemp(prefix="controller-bench-")
    subprocess.run([BINARY, "certs", "--out", certs, "--dns", "localhost"], check=True, capture_output=True)
    pool = ThreadPoolExecutor(CONNECTIONS)
    rows = []
    controller = Controller(ns, certs)
    try:
        time.sleep(5)
        idle, _ = rss_kib(controller.process.pid)
        print("controller idle RSS: %.1f MiB" % (idle / 1024), flush=True)
        created = 0
        for size in sizes:
            batch = ["web-%05d" % i for i in range(created, size)]

            def create(name):
                pod = copy.deepcopy(template)
                pod["metadata"]["name"] = name
                body = {"apiVersion": "v1", "kind": "Pod", "metadata": pod["metadata"], "spec": pod["spec"]}
                api.request("POST", "/api/v1/namespaces/%s/pods" % ns, body)

            # New pods: the controller marks each MigrationStepPending.
            list(pool.map(create, batch))
            wait_until("the Pending condition on every pod", lambda n=size: gated(api, ns)[1] >= n)
            # The kubelet finishes every new pod's step while no controller runs...
            controller.stop()

            def finish(name, i):
                pod = api.request("GET", "/api/v1/namespaces/%s/pods/%s" % (ns, name))
                api.request(
                    "PATCH", "/api/v1/namespaces/%s/pods/%s/status" % (ns, name),
                    kubelet_status(pod, i), "application/strategic-merge-patch+json",
                )  # fmt: skip

            list(pool.map(finish, batch, range(created, size)))
            created = size
            # ...then the controller starts, lists every pod and gates the new ones. Its own
            # counter of status patches sent tells when it is done (listing every pod
            # over and over to find out would load the API server it is measured on);
            # one list then checks every pod carries the condition.
            started = time.monotonic()
            controller = Controller(ns, certs)
            cpu_before = cpu_seconds(controller.process.pid)
            new = len(batch)
            wait_until(
                "a status patch for every new pod",
                lambda c=controller, n=new: c.requests().get("PATCH pods/status", 0) >= n,
            )
            took = time.monotonic() - started
            wait_until("every pod gated", lambda n=size: gated(api, ns)[0] >= n, 120)
            cpu = cpu_seconds(controller.process.pid) - cpu_before
            requests = controller.requests()
            time.sleep(2)
            rss, hwm = rss_kib(controller.process.pid)
            # A restart with every pod already right patches nothing.
            controller.stop()
            controller = Controller(ns, certs)
            time.sleep(5)  # its list is in and reconciled
            restart_patches = controller.requests().get("PATCH pods/status", 0)
            # The floor sets the same condition on the new pods itself (a new message, so
            # that every patch writes).
            controller.stop()
            patched, floor_took = floor(ns, "floor %d" % size)
            controller = Controller(ns, certs)
            row = dict(
                size=size, batch=len(batch), took=took, floor=floor_took * len(batch) / patched, rss=rss, hwm=hwm,
                cpu=cpu, requests=requests, restart_patches=restart_patches,
            )  # fmt: skip
            rows.append(row)
            print(
                "%6d pods (%d new): controller gated them in %.1fs (from its start, list included), floor %.1fs: "
                "%.2fx the floor's rate; RSS %.1f MiB (peak %.1f), CPU %.1fs, requests %s; a restart patched %d"
                % (size, len(batch), took, row["floor"], row["floor"] / took, rss / 1024, hwm / 1024, cpu,
                   requests, restart_patches),
                flush=True,
            )  # fmt: skip
        print()
        print(
            "| pods | new | controller | floor (8 connections) | ratio | RSS after | RSS peak | CPU "
            "| API requests | patches on restart |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            reqs = ", ".join("%s %d" % kv for kv in sorted(r["requests"].items()))
            print(
                "| %d | %d | %.1f s | %.1f s | %.2f | %.1f MiB | %.1f MiB | %.1f s | %s | %d |"
                % (r["size"], r["batch"], r["took"], r["floor"], r["floor"] / r["took"], r["rss"] / 1024,
                   r["hwm"] / 1024, r["cpu"], reqs, r["restart_patches"])
            )  # fmt: skip
        if len(rows) >= 2:
            xs = [r["size"] for r in rows]
            ys = [r["rss"] for r in rows]
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
            print("\nRSS growth per watched pod (least-squares fit): %.2f KiB (target at most 2 KiB)" % slope)
    finally:
        controller.stop()
        subprocess.run(["kubectl", "delete", "namespace", ns, "--wait=false"], capture_output=True)


if __name__ == "__main__":
    main()
