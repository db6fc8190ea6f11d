"""`django-migrate-webhook check --pre` on the test cluster, before anything is installed:
what passes there, and the failures a platform engineer meets (a mode the cluster cannot
serve, cert-manager absent, a caller without the permissions to install), each with what
to do. `check` after an install is tested with the installed chart (test_in_cluster.py)."""

import json
import os
import pathlib
import subprocess
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# The binary `cargo test` built, wherever cargo puts its target directory.
BIN = pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "debug" / "django-migrate-webhook"


def check(*args, kubeconfig=None):
    if not BIN.exists():
        pytest.fail(f"{BIN} is missing: build it with cargo build (scripts/test.sh does)")
    if not os.environ.get("KUBECONFIG"):
        pytest.fail("KUBECONFIG is not set: start a cluster with scripts/kube/start-cluster.sh (test.sh does)")
    env = {**os.environ, "KUBECONFIG": kubeconfig or os.environ["KUBECONFIG"]}
    return subprocess.run([str(BIN), "check", *args], capture_output=True, text=True, env=env, timeout=120)


def kubectl(*args, stdin=None):
    result = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True)
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result.stdout


def minor():
    version = json.loads(kubectl("version", "-o", "json"))["serverVersion"]
    return int(version["minor"].rstrip("+"))


def image_volume_capable(node):
    """A kubelet of 1.35+ with containerd 2.1+ (the runtimes the test nodes run)."""
    info = node["status"]["nodeInfo"]
    kubelet = tuple(int(p) for p in info["kubeletVersion"].lstrip("v").split(".")[:2])
    runtime, _, version = info["containerRuntimeVersion"].partition("://")
    containerd = tuple(int(p) for p in version.split(".")[:2]) if runtime == "containerd" else (0, 0)
    return kubelet >= (1, 35) and containerd >= (2, 1)


def lines(result):
    return json.loads(result.stdout)["lines"]


def test_pre_passes_on_the_test_cluster_and_says_what_it_checked():
    result = check("--pre")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "[ok]   the API server answers: Kubernetes v1." in out, out
    assert "[ok]   admissionregistration.k8s.io/v1 MutatingWebhookConfiguration is served" in out, out
    assert "you can create every kind of object the chart installs" in out, out
    assert "you hold every permission the chart grants its controller" in out, out
    # How many nodes could mount the code as an image volume, as their kubelet and runtime say.
    capable = sum(image_volume_capable(n) for n in json.loads(kubectl("get", "nodes", "-o", "json"))["items"])
    assert f"{capable} can mount the code as an image volume" in out, out
    assert out.rstrip().endswith("All checks passed."), out


def test_pre_for_image_volumes_reads_the_api_server_and_every_node():
    """codeDelivery imageVolume: the API server must keep volumes[].image (on by default
    from 1.35) and every node must mount it (kubelet 1.35+, containerd 2.1+); a node that
    cannot is named with its runtime, and the hint says what a pod there would show."""
    result = check("--pre", "--code-delivery", "imageVolume", "-o", "json")
    nodes = [line for line in lines(result) if line["section"] == "Nodes"]
    info = json.loads(kubectl("get", "nodes", "-o", "json"))["items"]
    runtimes = [n["status"]["nodeInfo"]["containerRuntimeVersion"] for n in info]
    kubelets = [n["status"]["nodeInfo"]["kubeletVersion"] for n in info]
    served = [line for line in nodes if "the API server" in line["message"]]
    assert len(served) == 1, nodes
    if minor() >= 35:
        assert served[0]["outcome"] == "ok", served
    else:
        assert served[0]["outcome"] == "fail" and "drops image volumes" in served[0]["message"], served
        assert "ImageVolume feature gate" in served[0]["hint"], served
    capable = [image_volume_capable(n) for n in info]
    mounting = [line for line in nodes if "image volume" in line["message"] and line is not served[0]]
    assert len(mounting) == 1, nodes
    if all(capable):
        assert mounting[0]["outcome"] == "ok", mounting
    else:
        assert mounting[0]["outcome"] == "fail", mounting
        name = info[0]["metadata"]["name"]
        assert f"{name} (kubelet {kubelets[0]}, {runtimes[0]})" in mounting[0]["message"], mounting
        assert "MigrationCodeUnavailable" in mounting[0]["hint"], mounting
    assert result.returncode == (0 if minor() >= 35 and all(capable) else 1), result.stdout


def test_pre_for_policy_mode_follows_the_api_servers_version():
    result = check("--pre", "--mode", "policy", "-o", "json")
    admission = [line for line in lines(result) if line["section"] == "Admission"]
    if minor() >= 36:
        assert result.returncode == 0, result.stdout
        assert any("policy mode can be used" in line["message"] for line in admission), admission
    else:
        assert result.returncode == 1, result.stdout
        failed = [line for line in admission if line["outcome"] == "fail"]
        assert len(failed) == 1 and "policy mode cannot be used" in failed[0]["message"], admission
        assert "Kubernetes 1.36 or later" in failed[0]["hint"], failed


def test_pre_fails_without_cert_manager_when_asked_for_it():
    result = check("--pre", "--cert-manager")
    assert result.returncode == 1, result.stdout
    failed = "[FAIL] cert-manager.io/v1 Certificate and Issuer are not served: cert-manager is not installed"
    assert failed in result.stdout, result.stdout
    assert "-> install cert-manager first, or install with tls.mode: generate" in result.stdout


def test_pre_names_the_permissions_a_caller_lacks(tmp_path):
    """A ServiceAccount allowed to read the cluster's version and nothing else."""
    namespace = f"dmw-check-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    try:
        kubectl("create", "serviceaccount", "nobody", "-n", namespace)
        token = kubectl("create", "token", "nobody", "-n", namespace).strip()
        config = json.loads(kubectl("config", "view", "--raw", "--minify", "-o", "json"))
        cluster = config["clusters"][0]
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [cluster],
                    "users": [{"name": "nobody", "user": {"token": token}}],
                    "contexts": [{"name": "nobody", "context": {"cluster": cluster["name"], "user": "nobody"}}],
                    "current-context": "nobody",
                }
            )
        )
        result = check("--pre", "-n", namespace, "-o", "json", kubeconfig=str(kubeconfig))
        assert result.returncode == 1, result.stdout + result.stderr
        rbac = [line for line in lines(result) if line["section"] == "Permissions of the caller"]
        assert [line["outcome"] for line in rbac] == ["fail", "fail"], rbac
        assert "create clusterroles.rbac.authorization.k8s.io" in rbac[0]["message"], rbac
        assert "create mutatingwebhookconfigurations.admissionregistration.k8s.io" in rbac[0]["message"], rbac
        assert "patch pods/status" in rbac[1]["message"], rbac
        assert "cluster administrator" in rbac[0]["hint"], rbac
    finally:
        kubectl("delete", "namespace", namespace, "--wait=false")


def test_an_unreachable_cluster_exits_3_with_the_reason(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "gone", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}],
                "current-context": "gone",
            }
        )
    )
    result = check("--pre", kubeconfig=str(kubeconfig))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "error: cannot reach the Kubernetes API server" in result.stderr, result.stderr
