"""The chart installed the way a platform team installs it, on the test cluster's real node
(scripts/kube/start-node.sh): real Helm in `generate` TLS mode, the webhook image built
by scripts/kube/build-images.sh, two replicas, and the API server calling them through
their Service. A Django Deployment goes through it and migrates for real; a storm of
applies survives the deletion of one webhook pod; the API server's own admission metrics
for the webhook are read and reported."""

import concurrent.futures
import contextlib
import dataclasses
import json
import os
import pathlib
import re
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid

import helm_python as helm
import pytest
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = str(ROOT / "charts" / "django-migrate-webhook")
VERSION = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
# The binary `cargo test` built, wherever cargo puts its target directory.
BIN = pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "debug" / "django-migrate-webhook"
WEBHOOK_IMAGE = "localhost/e2e/django-migrate-webhook"
DJANGO_IMAGE = "localhost/e2e/django:test"
RELEASE = "e2e"
FULLNAME = f"{RELEASE}-django-migrate-webhook"
WEBHOOK_NAME = "inject.django-migrate.io"
SELECTED = {"e2e.django-migrate.io/in-cluster": "true"}
STORM = 200
PACE = 0.1  # seconds between the starts of two applies of the storm


def env(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(
            f"{name} is not set: this test needs the control plane with a real node, the "
            "images and the databases that scripts/test.sh starts (scripts/kube/start-cluster.sh "
            "with WITH_NODE=1, scripts/kube/start-node.sh, scripts/databases.sh with DB_EXTRA_LISTEN)"
        )
    return value


def kubectl(*args, stdin=None, check=True):
    result = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result


def get_json(*args):
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


def wait_until(what, predicate, timeout=120, interval=1.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def psql(database, sql):
    result = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", env("DJANGO_MIGRATE_TEST_POSTGRES_PORT")]
        + ["-U", env("DJANGO_MIGRATE_TEST_DB_USER"), "-d", database, "-tA", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True,
        text=True,
        env={**os.environ, "PGPASSWORD": env("DJANGO_MIGRATE_TEST_DB_PASSWORD")},
    )
    assert result.returncode == 0, f"{sql}: {result.stderr}"
    return result.stdout.strip()


class ApiServer:
    """Plain HTTPS to the test API server with the admin token: the storm's clients."""

    def __init__(self):
        self.url = env("KUBE_APISERVER_URL")
        self.token = env("KUBE_ADMIN_TOKEN")
        self.context = ssl.create_default_context(cafile=env("KUBE_CA_FILE"))

    def request(self, method, path, body=None, content_type="application/json", timeout=30):
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": content_type},
        )
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def apply(self, namespace, deployment):
        name = deployment["metadata"]["name"]
        return self.request(
            "PATCH",
            f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}?fieldManager=e2e-storm&force=true",
            deployment,
            content_type="application/apply-patch+yaml",
        )

    def webhook_metrics(self):
        """This webhook's series from the API server's /metrics, summed over operations:
        {metric name (without the apiserver_admission_webhook_ prefix) + labels: value}."""
        status, text = self.request("GET", "/metrics")
        assert status == 200, text[:500]
        series = {}
        for line in text.splitlines():
            if not line.startswith("apiserver_admission_webhook_") or f'name="{WEBHOOK_NAME}"' not in line:
                continue
            key, value = line.rsplit(" ", 1)
            series[key] = float(value)
        return series


def deployment(namespace, name, replicas=0, image=DJANGO_IMAGE, env_vars=None):
    container = {"name": "web", "image": image, "imagePullPolicy": "Never"}
    if env_vars:
        container["env"] = [{"name": k, "value": str(v)} for k, v in env_vars.items()]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": name, "django-migrate.io/inject": "true"},
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"terminationGracePeriodSeconds": 2, "containers": [container]},
            },
        },
    }


def django_shop(namespace, database):
    """The test project's 3-replica Deployment, on PostgreSQL database `database` (reached on
    the node's address)."""
    return deployment(
        namespace,
        "shop",
        replicas=3,
        env_vars={
            "DB_ENGINE": "postgresql",
            "DB_NAME": database,
            "DB_HOST": env("DJANGO_MIGRATE_TEST_POSTGRES_NODE_HOST"),
            "DB_PORT": env("DJANGO_MIGRATE_TEST_POSTGRES_PORT"),
            "DB_USER": env("DJANGO_MIGRATE_TEST_DB_USER"),
            "DB_PASSWORD": env("DJANGO_MIGRATE_TEST_DB_PASSWORD"),
        },
    )


def injected(obj):
    """Injected with either code delivery: the copy then the step, or the step alone with the
    code image volume."""
    spec = obj["spec"]["template"]["spec"]
    names = [c["name"] for c in spec.get("initContainers", [])]
    if names[-2:] == ["django-migrate-code", "django-migrate"]:
        return True
    volumes = [v for v in spec.get("volumes", []) if v["name"] == "django-migrate-code"]
    return names[-1:] == ["django-migrate"] and len(volumes) == 1 and "image" in volumes[0]


def webhook_pods(namespace):
    pods = get_json("pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={RELEASE}")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def ready(pod):
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def lease_holder(namespace):
    lease = get_json("lease", "django-migrate-webhook-controller", "-n", namespace)
    return lease["spec"].get("holderIdentity")


def apps_namespace(prefix):
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    kubectl("label", "namespace", name, *(f"{k}={v}" for k, v in SELECTED.items()))
    return name


def rolled_out(namespace, name="shop"):
    rollout = kubectl("rollout", "status", f"deployment/{name}", "-n", namespace, "--timeout=240s", check=False)
    assert rollout.returncode == 0, rollout.stdout + rollout.stderr


@dataclasses.dataclass
class Release:
    config: helm.Config
    name: str
    namespace: str
    values: dict
    apps: str
    database: str

    @property
    def fullname(self):
        return f"{self.name}-django-migrate-webhook"


@contextlib.contextmanager
def own_release(name, **values):
    """The chart installed as release `name` in a namespace of its own (its webhook selecting
    only this tier's labelled namespaces), an apps namespace and a PostgreSQL database for a
    Django Deployment; all of them removed afterwards."""
    env("DJANGO_MIGRATE_TEST_POSTGRES_NODE_HOST")
    namespace = f"dmw-{name}-{uuid.uuid4().hex[:6]}"
    values = {
        "image": {"repository": WEBHOOK_IMAGE, "tag": VERSION, "pullPolicy": "Never"},
        "webhook": {"namespaceSelector": {"matchLabels": SELECTED}},
        "logFormat": "text",
        **values,
    }
    config = helm.Config(namespace=namespace)
    apps = database = None
    try:
        config.install(CHART, name, values, namespace=namespace, create_namespace=True, wait="watcher", timeout=180)
        apps = apps_namespace(f"dmw-{name}-apps")
        database = f"{name}_" + apps.replace("-", "_")
        psql("postgres", f"CREATE DATABASE {database}")
        yield Release(config, name, namespace, values, apps, database)
    finally:
        try:
            config.uninstall(name, ignore_not_found=True, wait="watcher", timeout=300)
        except helm.HelmError as error:
            print(f"uninstall: {error}")
        for ns in (apps, namespace):
            if ns:
                kubectl("delete", "namespace", ns, "--wait=false", check=False)
        if database:
            psql("postgres", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


@pytest.fixture(scope="module")
def installed():
    """The chart installed with Helm in generate mode, its two replicas Ready."""
    env("DJANGO_MIGRATE_TEST_POSTGRES_NODE_HOST")
    nodes = get_json("nodes")["items"]
    if not any(ready(n) for n in nodes):
        pytest.fail("no Ready node: start one with scripts/kube/start-node.sh (scripts/test.sh does)")
    namespace = f"dmw-e2e-{uuid.uuid4().hex[:6]}"
    values = {
        "image": {"repository": WEBHOOK_IMAGE, "tag": VERSION, "pullPolicy": "Never"},
        "tls": {"mode": "generate"},
        # Only the namespaces of this module: other tiers register webhooks of their own.
        "webhook": {"namespaceSelector": {"matchLabels": SELECTED}},
        "logFormat": "text",
    }
    config = helm.Config(namespace=namespace)
    started = time.monotonic()
    try:
        config.install(CHART, RELEASE, values, namespace=namespace, create_namespace=True, wait="watcher", timeout=180)
        yield namespace, time.monotonic() - started
    finally:
        for pod in webhook_pods(namespace):
            logs = kubectl("logs", "-n", namespace, pod["metadata"]["name"], "--tail=20", check=False).stdout
            print(f"--- {pod['metadata']['name']}\n{logs}")
        try:
            config.uninstall(RELEASE, ignore_not_found=True, wait="watcher", timeout=60)
        except helm.HelmError as error:
            print(f"uninstall: {error}")
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_two_replicas_serve_through_the_service_with_one_lease_holder(installed):
    namespace, seconds = installed
    pods = webhook_pods(namespace)
    assert len(pods) == 2 and all(ready(p) for p in pods), [p["status"] for p in pods]
    holder = wait_until("a lease holder", lambda: lease_holder(namespace), timeout=60)
    assert holder in {p["metadata"]["name"] for p in pods}
    leases = get_json("leases", "-n", namespace)["items"]
    assert [lease["metadata"]["name"] for lease in leases] == ["django-migrate-webhook-controller"]
    hook = get_json("mutatingwebhookconfiguration", FULLNAME)["webhooks"][0]
    assert hook["clientConfig"]["service"] == {"name": FULLNAME, "namespace": namespace, "path": "/mutate", "port": 443}
    # A server-side dry run goes through admission: the API server called the Service.
    apps = apps_namespace("dmw-e2e-probe")
    try:
        out = kubectl(
            "apply", "--dry-run=server", "-o", "json", "-f", "-", stdin=json.dumps(deployment(apps, "probe"))
        ).stdout
        assert injected(json.loads(out)), out
    finally:
        kubectl("delete", "namespace", apps, "--wait=false", check=False)
    print(f"chart installed, 2 replicas Ready after {seconds:.1f}s; lease holder {holder}")


def test_a_django_deployment_migrates_through_the_installed_chart(installed):
    namespace, _ = installed
    apps = apps_namespace("dmw-e2e-django")
    database = "e2e_" + apps.replace("-", "_")
    psql("postgres", f"CREATE DATABASE {database}")
    try:
        spec = django_shop(apps, database)
        started = time.monotonic()
        kubectl("apply", "-f", "-", stdin=json.dumps(spec))
        assert injected(get_json("deployment", "shop", "-n", apps))
        rollout = kubectl("rollout", "status", "deployment/shop", "-n", apps, "--timeout=240s", check=False)
        assert rollout.returncode == 0, rollout.stdout + rollout.stderr + kubectl("describe", "pods", "-n", apps).stdout
        seconds = time.monotonic() - started
        pods = get_json("pods", "-n", apps)["items"]
        assert len(pods) == 3
        for pod in pods:
            gate = [c for c in pod["status"]["conditions"] if c["type"] == "django-migrate.io/migrated"]
            assert gate and gate[0]["status"] == "True", pod["status"]["conditions"]
        twice = psql(database, "SELECT app, name FROM django_migrations GROUP BY app, name HAVING count(*) > 1")
        assert twice == "", f"applied more than once: {twice}"
        applied = int(psql(database, "SELECT count(*) FROM django_migrations WHERE app = 'catalog'"))
        assert applied >= 3
        print(f"3 replicas rolled out through the installed chart in {seconds:.1f}s; {applied} catalog migrations once")
    finally:
        kubectl("delete", "namespace", apps, "--wait=false", check=False)


def test_a_storm_of_applies_survives_the_deletion_of_a_webhook_pod(installed):
    namespace, _ = installed
    api = ApiServer()
    apps = apps_namespace("dmw-e2e-storm")
    before = api.webhook_metrics()
    victim = lease_holder(namespace)
    done = []
    lock = threading.Lock()
    deleted = {}

    started = time.monotonic()

    def one(i):
        # Paced, so that the storm outlasts the deleted pod's shutdown delay and drain
        # and goes on after it is gone.
        time.sleep(max(0.0, started + i * PACE - time.monotonic()))
        status, body = api.apply(apps, deployment(apps, f"storm-{i:03d}", image=f"{DJANGO_IMAGE}"))
        with lock:
            done.append(i)
            if len(done) == STORM // 5 and not deleted:
                # Delete the lease holder, gracefully, as a node drain would: the other
                # replica, the PDB and the shutdown delay must carry the rest.
                deleted["at"] = len(done)
                deleted["proc"] = subprocess.Popen(
                    ["kubectl", "delete", "pod", "-n", namespace, victim, "--wait=false"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
        return i, status, body

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(one, range(STORM)))
        seconds = time.monotonic() - started
        assert "proc" in deleted and deleted["proc"].wait(30) == 0, deleted
        failed = [(i, status, body[:300]) for i, status, body in results if status not in (200, 201)]
        assert not failed, f"{len(failed)} of {STORM} applies failed: {failed[:3]}"
        not_injected = [i for i, _, body in results if not injected(json.loads(body))]
        assert not not_injected, f"stored without the injection: {not_injected[:10]}"
        # The deleted pod is replaced and both replicas serve again.
        wait_until(
            "two Ready webhook replicas after the deletion",
            lambda: (lambda pods: len(pods) == 2 and all(ready(p) for p in pods))(webhook_pods(namespace)),
            timeout=120,
        )
        successor = wait_until(
            "another lease holder", lambda: (lambda h: h if h != victim else None)(lease_holder(namespace)), timeout=60
        )
        after = api.webhook_metrics()
        report = admission_report(before, after)
        print(
            f"storm: {STORM} applies in {seconds:.1f}s with 16 clients, lease holder {victim} deleted "
            f"after {deleted['at']} (new holder {successor}): 0 failed; API server saw {report}"
        )
        assert report["calls"] >= STORM, report
        assert report["rejected"] == 0, report
        assert report["non_200"] == 0, report
    finally:
        kubectl("delete", "namespace", apps, "--wait=false", check=False)


def admission_report(before, after):
    """The API server's view of this webhook between two scrapes."""

    def delta(pattern):
        regex = re.compile(pattern)
        return sum(v - before.get(k, 0.0) for k, v in after.items() if regex.search(k))

    count = delta(r"^apiserver_admission_webhook_admission_duration_seconds_count\{")
    total = delta(r"^apiserver_admission_webhook_admission_duration_seconds_sum\{")
    fast = delta(r'^apiserver_admission_webhook_admission_duration_seconds_bucket\{.*le="0.005"')
    return {
        "calls": int(count),
        "mean_ms": round(1000 * total / count, 2) if count else None,
        "share_le_5ms": round(fast / count, 3) if count else None,
        "rejected": int(delta(r"^apiserver_admission_webhook_rejection_count\{")),
        "non_200": int(delta(r'^apiserver_admission_webhook_request_total\{(?!.*code="200")')),
    }


GITOPS_MANAGER = "argocd-controller"


def without_status(deployment):
    """The Deployment without what its controller writes: status, and its managed fields."""
    meta = {k: v for k, v in deployment["metadata"].items() if k != "resourceVersion"}
    meta["managedFields"] = [f for f in meta.get("managedFields", []) if f.get("subresource") != "status"]
    return {**{k: v for k, v in deployment.items() if k != "status"}, "metadata": meta}


def test_gitops_tools_see_injected_deployments_in_sync(installed):
    """What Argo CD and Flux rely on: after a client-side or a server-side apply, `kubectl
    diff` of the same manifest finds nothing (its dry run goes through the webhook too), and
    a second server-side apply with a GitOps tool's field manager stores nothing new; the
    same after an image update."""
    apps = apps_namespace("dmw-e2e-gitops")
    ssa = ["--server-side", f"--field-manager={GITOPS_MANAGER}"]
    try:
        for how in ("client-side", "server-side"):
            name = f"gitops-{how}"
            for image in ("registry.invalid/shop:1", "registry.invalid/shop:2"):
                manifest = json.dumps(deployment(apps, name, image=image))
                kubectl("apply", "-f", "-", *(ssa if how == "server-side" else []), stdin=manifest)
                stored = get_json("deployment", name, "-n", apps)
                assert injected(stored), stored["spec"]["template"]["spec"]
                assert stored["spec"]["template"]["spec"]["initContainers"][-1]["image"] == image
                diff = kubectl("diff", "-f", "-", *(ssa if how == "server-side" else []), stdin=manifest, check=False)
                assert diff.returncode == 0, f"{how}, {image}: kubectl diff found a change:\n{diff.stdout}{diff.stderr}"
                kubectl("apply", "-f", "-", *ssa, stdin=manifest)
                before = get_json("deployment", name, "-n", apps)
                kubectl("apply", "-f", "-", *ssa, stdin=manifest)
                after = get_json("deployment", name, "-n", apps)
                # The deployment controller writes status at its own pace; only a write of
                # anything else would be the GitOps apply's.
                same = after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
                assert same or without_status(after) == without_status(before), (
                    f"{how}, {image}: a second server-side apply stored a change"
                )
        print("GitOps: kubectl diff empty and server-side re-applies stored nothing, before and after an image update")
    finally:
        kubectl("delete", "namespace", apps, "--wait=false", check=False)


def check(*args):
    if not BIN.exists():
        pytest.fail(f"{BIN} is missing: build it with cargo build (scripts/test.sh does)")
    result = subprocess.run([str(BIN), "check", *args, "-o", "json"], capture_output=True, text=True, timeout=120)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    lines = json.loads(result.stdout)["lines"]
    return result.returncode, {(line["section"], line["outcome"], line["message"]): line.get("hint") for line in lines}


def lines_with(report, outcome, *words):
    return [key for key in report if key[1] == outcome and all(w in key[2] for w in words)]


def test_check_passes_on_the_installed_chart_and_names_an_unselected_namespace(installed):
    namespace, _ = installed
    apps = apps_namespace("dmw-e2e-check")
    try:
        code, report = check("-n", namespace, "--probe-namespace", apps)
        assert code == 0, report
        expected = [
            ("found", f"{namespace}/{FULLNAME}", "webhook mode"),
            ("2 of 2 replicas are available",),
            (f"MutatingWebhookConfiguration {FULLNAME} calls Service {namespace}/{FULLNAME}",),
            ("has 2 ready endpoint(s)",),
            ("is trusted by the caBundle", f"{FULLNAME}.{namespace}.svc"),
            ("holds Lease django-migrate-webhook-controller",),
            (f"in namespace {apps} comes back injected",),
        ]
        for words in expected:
            assert lines_with(report, "ok", *words), (words, report)
        # Its webhook selects only the namespaces labelled for this module: default is not.
        code, report = check("-n", namespace, "--probe-namespace", "default")
        assert code == 1, report
        [failed] = [k for k in report if k[1] == "fail"]
        assert "in namespace default comes back without the injection" in failed[2], failed
        assert "namespaceSelector" in report[failed], report[failed]
    finally:
        kubectl("delete", "namespace", apps, "--wait=false", check=False)


def test_check_fails_with_what_to_do_when_no_replica_serves(installed):
    """Last in this module: it scales the webhook to zero."""
    namespace, _ = installed
    apps = apps_namespace("dmw-e2e-check-down")
    try:
        kubectl("scale", "deployment", FULLNAME, "-n", namespace, "--replicas=0")
        # Gone, not only terminating: a terminating replica keeps serving for its shutdown
        # delay, and the API server may still call it.
        wait_until("no webhook pod", lambda: not get_json("pods", "-n", namespace)["items"], timeout=90)
        code, report = check("-n", namespace, "--probe-namespace", apps)
        assert code == 1, report
        failed = {k[2]: report[k] for k in report if k[1] == "fail"}
        assert any("scaled to 0 replicas" in m for m in failed), failed
        assert any("has no ready endpoint" in m for m in failed), failed
        assert any("no replica holds Lease" in m for m in failed), failed
        refused = [m for m in failed if "was refused" in m]
        assert refused and "failed calling webhook" in refused[0], failed
        assert all(hint for hint in failed.values()), failed
    finally:
        kubectl("scale", "deployment", FULLNAME, "-n", namespace, "--replicas=2", check=False)
        kubectl("delete", "namespace", apps, "--wait=false", check=False)
