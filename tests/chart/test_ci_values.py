"""Every values file in the chart's `ci/` folder, installed with real Helm on the test
cluster's real node the way a platform team would install it: its replicas Ready, the API
server calling the webhook through its Service, and what the file is about checked on the
running pods (the UID the process runs as, read from the node's /proc; the NetworkPolicy
as the API server stored it)."""

import json
import os
import pathlib
import subprocess
import time
import uuid

import helm_python as helm
import pytest
import yaml
from test_in_cluster import BIN, VERSION, WEBHOOK_IMAGE, deployment, env, get_json, injected, kubectl, ready, wait_until

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "django-migrate-webhook"
RELEASE = "e2e-ci"
SELECTED = {"e2e.django-migrate.io/ci-values": "true"}
CI_FILES = sorted((CHART / "ci").glob("*-values.yaml"))


def process_uid(pod):
    """The real UID of the pod's webhook process, from the node's /proc (the node is this
    machine): containerd's task list gives the PID."""
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    socket = os.environ.get("E2E_CTR_SOCK", "/run/e2e-containerd/containerd.sock")
    tasks = subprocess.run(
        ["ctr", "--address", socket, "-n", "k8s.io", "tasks", "ls"], capture_output=True, text=True, check=True
    ).stdout
    pid = next(line.split()[1] for line in tasks.splitlines() if line.startswith(container_id))
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))


def serves_image_volumes(namespace):
    """Whether the API server keeps a pod's image volume: a server-side dry run of a bare
    pod with one, nothing stored."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "image-volume-probe", "namespace": namespace},
        "spec": {
            "containers": [{"name": "c", "image": WEBHOOK_IMAGE}],
            "volumes": [{"name": "v", "image": {"reference": WEBHOOK_IMAGE}}],
        },
    }
    stored = json.loads(kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", stdin=json.dumps(pod)).stdout)
    return any("image" in v for v in stored["spec"].get("volumes", []))


def steps_only(obj):
    """Injected with the step and no code: the webhook's image volume removed by the API
    server."""
    spec = obj["spec"]["template"]["spec"]
    names = [c["name"] for c in spec.get("initContainers", [])]
    volumes = [v["name"] for v in spec.get("volumes", [])]
    return names[-1:] == ["django-migrate"] and "django-migrate-code" not in names + volumes


def test_every_ci_values_file_is_tested():
    assert [f.name for f in CI_FILES] == [
        "default-values.yaml",
        "image-volume-values.yaml",
        "network-policy-values.yaml",
        "openshift-uid-values.yaml",
        "uid-from-runtime-values.yaml",
    ]


@pytest.mark.parametrize("path", CI_FILES, ids=lambda p: p.stem)
def test_the_chart_installs_and_serves_with_each_ci_values_file(path):
    env("DJANGO_MIGRATE_TEST_POSTGRES_NODE_HOST")
    values = yaml.safe_load(path.read_text()) or {}
    values.update(
        {
            "image": {"repository": WEBHOOK_IMAGE, "tag": VERSION, "pullPolicy": "Never"},
            "webhook": {"namespaceSelector": {"matchLabels": SELECTED}},
            "logFormat": "text",
        }
    )
    namespace = f"dmw-ci-{uuid.uuid4().hex[:6]}"
    apps = f"dmw-ci-apps-{uuid.uuid4().hex[:6]}"
    config = helm.Config(namespace=namespace)
    started = time.monotonic()
    try:
        config.install(
            str(CHART), RELEASE, values, namespace=namespace, create_namespace=True, wait="watcher", timeout=180
        )
        pods = [p for p in get_json("pods", "-n", namespace)["items"] if not p["metadata"].get("deletionTimestamp")]
        assert len(pods) == 2 and all(ready(p) for p in pods), [p["status"] for p in pods]
        pod_security = pods[0]["spec"].get("securityContext", {})
        expected_pod_security = values.get("podSecurityContext", {})
        uid = process_uid(pods[0])
        if path.stem.startswith("uid-from-runtime"):
            assert "runAsUser" not in pod_security and "runAsGroup" not in pod_security, pod_security
            assert uid == 65532, f"the image's user runs the process: {uid}"
        elif path.stem.startswith("openshift-uid"):
            assert pod_security["runAsUser"] == expected_pod_security["runAsUser"]
            assert uid == expected_pod_security["runAsUser"], uid
        else:
            assert uid == 65532, uid
        if path.stem.startswith("network-policy"):
            policy = get_json("networkpolicy", f"{RELEASE}-django-migrate-webhook", "-n", namespace)
            ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
            assert ports == ["https", "metrics"], policy["spec"]
            assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        # Serving: a server-side dry run goes through the API server, the Service and the webhook.
        kubectl("create", "namespace", apps)
        kubectl("label", "namespace", apps, *(f"{k}={v}" for k, v in SELECTED.items()))
        image_volume = path.stem.startswith("image-volume")
        # An API server that does not serve volumes[].image (1.33 and 1.34 without the
        # ImageVolume feature gate) removes the code volume and its mounts from what the
        # webhook injects: what a platform team meets there is checked below.
        volume_removed = image_volume and not serves_image_volumes(apps)
        stepped = steps_only if volume_removed else injected
        out = wait_until(
            "the webhook to answer through its Service",
            lambda: (lambda r: r.returncode == 0 and stepped(json.loads(r.stdout)) and r.stdout)(
                kubectl(
                    "apply",
                    "--dry-run=server",
                    "-o",
                    "json",
                    "-f",
                    "-",
                    stdin=json.dumps(deployment(apps, "probe")),
                    check=False,
                )
            ),
            timeout=60,
        )
        assert stepped(json.loads(out))
        if volume_removed:
            check_run = subprocess.run(
                [str(BIN), "check", "-n", namespace, "--probe-namespace", apps, "-o", "json"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert check_run.returncode == 1, check_run
            lines = json.loads(check_run.stdout)["lines"]
            (dropped,) = [line for line in lines if "drops image volumes" in line["message"]]
            assert dropped["outcome"] == "fail" and dropped["section"] == "Nodes", lines
            assert "ImageVolume feature gate" in dropped["hint"], dropped
            # A pod of such a Deployment is never Ready, and says why.
            kubectl("apply", "-f", "-", stdin=json.dumps(deployment(apps, "removed", replicas=1)))
            condition = wait_until(
                "the pod's condition to say its code was removed",
                lambda: next(
                    (
                        c
                        for p in get_json("pods", "-n", apps, "-l", "app=removed")["items"]
                        for c in p.get("status", {}).get("conditions", [])
                        if c["type"] == "django-migrate.io/migrated" and c.get("reason") == "MigrationCodeUnavailable"
                    ),
                    None,
                ),
                timeout=90,
            )
            assert condition["status"] == "False", condition
            assert "removed the code image volume" in condition["message"], condition
            (pod,) = get_json("pods", "-n", apps, "-l", "app=removed")["items"]
            assert not ready(pod), pod["status"]
        elif image_volume:
            stored = json.loads(out)["spec"]["template"]["spec"]
            assert [c["name"] for c in stored["initContainers"]] == ["django-migrate"], stored
            volume = next(v for v in stored["volumes"] if v["name"] == "django-migrate-code")
            assert volume["image"] == {"reference": f"{WEBHOOK_IMAGE}:{VERSION}", "pullPolicy": "Never"}, volume
            # `check` reads the installation's delivery: the dry run must come back with it.
            result = subprocess.run(
                [str(BIN), "check", "-n", namespace, "--probe-namespace", apps, "-o", "json"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            lines = json.loads(result.stdout)["lines"]
            (dry_run,) = [line for line in lines if line["section"] == "Injection"]
            assert dry_run["outcome"] == "ok", lines
            assert "django-migrate, image volume django-migrate-code" in dry_run["message"], dry_run
            assert any(line["section"] == "Nodes" and "image volume" in line["message"] for line in lines), lines
        removed = ", the API server removed the image volume: check fails, the pod says why" if volume_removed else ""
        print(
            f"{path.name}: 2 replicas Ready and serving after {time.monotonic() - started:.1f}s, "
            f"process UID {uid}{removed}"
        )
    finally:
        try:
            config.uninstall(RELEASE, ignore_not_found=True, wait="watcher", timeout=60)
        except helm.HelmError as error:
            print(f"uninstall: {error}")
        kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)
        kubectl("delete", "namespace", apps, "--wait=false", "--ignore-not-found", check=False)
