"""The chart tier: the chart rendered, linted and installed with Helm's own Go SDK
(helm-python-sdk), its objects checked as a platform engineer would, and applied to the
real test control plane (scripts/kube/) so that the API server validates every object."""

import base64
import json
import os
import pathlib
import subprocess
import tempfile

import helm_python as helm
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = str(ROOT / "charts" / "django-migrate-webhook")
# The binary `cargo test` built, wherever cargo puts its target directory.
BIN = pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "debug" / "django-migrate-webhook"
RELEASE, NAMESPACE = "dmw", "dmw-system"


def dev_ca_bundle():
    """A CA made by the project's own `certs` command, for tls.mode secret."""
    out = tempfile.mkdtemp()
    subprocess.run([str(BIN), "certs", "--out", out, "--dns", "x"], check=True, capture_output=True)
    return base64.b64encode(pathlib.Path(out, "ca.crt").read_bytes()).decode()


TLS_MODES = {
    "generate": {},
    "certManager": {"tls": {"mode": "certManager"}},
    "secret": {"tls": {"mode": "secret", "secret": {"name": "my-webhook-tls", "caBundle": "__CA__"}}},
}


def values_for(mode):
    values = json.loads(json.dumps(TLS_MODES[mode]))
    if mode == "secret":
        values["tls"]["secret"]["caBundle"] = dev_ca_bundle()
    return values


def render(values=None):
    rendered = helm.Chart.load(CHART).render(values or {}, name=RELEASE, namespace=NAMESPACE)
    docs = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def is_hook(doc):
    return "helm.sh/hook" in (doc["metadata"].get("annotations") or {})


def one(docs, kind):
    """The one object of `kind` the release installs (hooks are run around it, not installed)."""
    found = [d for d in docs if d["kind"] == kind and not is_hook(d)]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def kubectl(*args, stdin=None):
    if not os.environ.get("KUBECONFIG"):
        pytest.fail(
            "KUBECONFIG is not set: run scripts/test.sh, which builds and starts the test "
            "control plane (scripts/kube/), or start it and source its env file"
        )
    return subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True)


@pytest.mark.parametrize("mode", list(TLS_MODES))
def test_lint_passes_in_every_tls_mode(mode):
    report = helm.lint(CHART, values_for(mode), namespace=NAMESPACE, strict=True, kube_version="v1.34.0")
    assert report["errors"] == [], report
    assert all(m["severity"] < 2 for m in report["messages"]), report


# Volume types the restricted Pod Security Standard allows.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def assert_restricted(pod):
    """Every rule of the restricted Pod Security Standard (baseline included), checked on
    the rendered pod (the test control plane enforces no Pod Security level by itself)."""
    psc = pod.get("securityContext", {})
    containers = pod.get("containers", []) + pod.get("initContainers", []) + pod.get("ephemeralContainers", [])
    # Baseline: host namespaces, host ports, hostPath, privileged, capabilities, /proc,
    # SELinux, AppArmor, sysctls, Windows HostProcess.
    for forbidden in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(forbidden), forbidden
    assert not psc.get("windowsOptions", {}).get("hostProcess")
    safe_sysctls = {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
    }
    assert {s["name"] for s in psc.get("sysctls", [])} <= safe_sysctls
    assert psc.get("seLinuxOptions", {}).get("type", "container_t") in (
        "container_t",
        "container_init_t",
        "container_kvm_t",
    )
    assert not {k for k in pod.get("metadata", {}).get("annotations", {}) if k.startswith("container.apparmor")}
    # Restricted: volume types, non-root, seccomp.
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        assert kinds <= RESTRICTED_VOLUMES, f"volume {volume['name']}: {kinds}"
    assert psc.get("runAsUser", 1) != 0
    assert psc.get("seccompProfile", {}).get("type") in ("RuntimeDefault", "Localhost")
    for c in containers:
        sc = c.get("securityContext", {})
        name = c["name"]
        assert not sc.get("privileged"), name
        assert not sc.get("windowsOptions", {}).get("hostProcess"), name
        assert all(not p.get("hostPort") for p in c.get("ports", [])), name
        assert sc.get("procMount", "Default") == "Default", name
        assert sc.get("allowPrivilegeEscalation") is False, name
        assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, name
        assert sc.get("runAsUser", psc.get("runAsUser", 1)) != 0, name
        assert sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type") in ("RuntimeDefault", "Localhost"), (
            name
        )
        assert "ALL" in sc.get("capabilities", {}).get("drop", []), name
        assert set(sc.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}, name
        assert sc.get("readOnlyRootFilesystem") is True, name


def test_shutdown_delay_fits_in_the_grace_period():
    pod = one(render(), "Deployment")["spec"]["template"]["spec"]
    assert "--shutdown-delay=5" in pod["containers"][0]["args"]
    assert pod["terminationGracePeriodSeconds"] == 30
    pod = one(render({"shutdownDelaySeconds": 20, "terminationGracePeriodSeconds": 45}), "Deployment")["spec"][
        "template"
    ]["spec"]
    assert "--shutdown-delay=20" in pod["containers"][0]["args"]
    with pytest.raises(
        helm.HelmError, match=r"terminationGracePeriodSeconds \(30\) must be at least shutdownDelaySeconds \(15\) \+ 21"
    ):
        render({"shutdownDelaySeconds": 15})


def test_deployment_runs_serve_with_the_controller_in_a_restricted_pod():
    docs = render()
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[0] == "serve" and "--controller" in args
    assert "--tls-cert=/etc/django-migrate-webhook/tls/tls.crt" in args
    # The injected code-copy container runs the chart's own image.
    image = container["image"]
    assert f"--code-image={image}" in args
    assert f"--code-image-pull-policy={container['imagePullPolicy']}" in args
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]
    assert_restricted(pod)
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    # The Service and the PDB select exactly these pods.
    labels = spec["template"]["metadata"]["labels"]
    service = one(docs, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"https", "metrics"}
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    assert pdb["spec"]["minAvailable"] == 1
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def cluster_rules(docs):
    return {
        (group, resource): sorted(rule["verbs"])
        for rule in one(docs, "ClusterRole")["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }


def test_rbac_grants_exactly_what_the_controller_needs():
    docs = render()
    assert cluster_rules(docs) == {
        ("", "pods"): ["get", "list", "watch"],
        ("", "pods/status"): ["patch"],
        ("apps", "deployments"): ["get", "list", "patch", "watch"],
        ("apps", "statefulsets"): ["get", "list", "patch", "watch"],
        ("apps", "replicasets"): ["list"],
        ("apps", "controllerrevisions"): ["list"],
        ("batch", "jobs"): ["create", "get", "list", "watch"],
        ("batch", "cronjobs"): ["list", "watch"],
        ("", "events"): ["create", "patch"],
        ("events.k8s.io", "events"): ["create", "patch"],
    }
    args = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--heal-missed-injections" not in args
    assert "--contract-jobs" in args
    assert "--argo-rollouts" not in args
    # Told that Argo Rollouts is installed: Rollouts are watched and, for the record, patched.
    told = render({"injection": {"argoRollouts": True}})
    assert cluster_rules(told)[("argoproj.io", "rollouts")] == ["get", "list", "patch", "watch"]
    assert "--argo-rollouts" in one(told, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    role = one(docs, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update", "patch"]}
    ]
    sa = one(docs, "ServiceAccount")["metadata"]["name"]
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        assert one(docs, kind)["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]


def test_an_upgrade_never_leaves_zero_ready_replicas():
    spec = one(render(), "Deployment")["spec"]
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}


def test_the_uninstall_hook_removes_the_injection_with_its_own_narrow_grant():
    docs = render()
    hooks = [d for d in docs if is_hook(d)]
    assert sorted(d["kind"] for d in hooks) == ["ClusterRole", "ClusterRoleBinding", "Job", "ServiceAccount"]
    for d in hooks:
        annotations = d["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-delete", d
        # Kept when it fails, for its logs; gone when it succeeds.
        assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    weight = {d["kind"]: int(d["metadata"]["annotations"]["helm.sh/hook-weight"]) for d in hooks}
    assert weight["ServiceAccount"] < weight["ClusterRoleBinding"] < weight["Job"]
    role = next(d for d in hooks if d["kind"] == "ClusterRole")
    assert role["rules"] == [
        {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets"], "verbs": ["get", "list", "patch"]},
        {"apiGroups": ["batch"], "resources": ["cronjobs"], "verbs": ["get", "list", "patch"]},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list"]},
        {"apiGroups": ["argoproj.io"], "resources": ["rollouts"], "verbs": ["get", "list", "patch"]},
    ]
    job = next(d for d in hooks if d["kind"] == "Job")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["remove-injection", "--timeout=240"]
    assert container["image"] == one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 300
    assert not [d for d in render({"uninstall": {"removeInjection": False}}) if is_hook(d)]


def test_healing_missed_injections_adds_the_flag_and_patch_on_deployments_only():
    docs = render({"controller": {"healMissedInjections": True, "contractJobs": False}})
    rules = cluster_rules(docs)
    assert rules[("apps", "deployments")] == ["get", "list", "patch", "watch"]
    assert rules[("apps", "statefulsets")] == ["get", "list", "patch", "watch"]
    assert rules[("batch", "cronjobs")] == ["list", "patch", "watch"]
    assert rules[("batch", "jobs")] == ["list", "watch"]
    assert "--heal-missed-injections" in one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]


def test_contract_jobs_off_drops_the_flag_and_every_grant_to_run_jobs():
    docs = render({"controller": {"contractJobs": False}})
    rules = cluster_rules(docs)
    assert rules[("batch", "jobs")] == ["list", "watch"]
    assert ("apps", "replicasets") not in rules
    assert ("apps", "controllerrevisions") not in rules
    assert rules[("apps", "deployments")] == ["get", "list", "watch"]
    assert rules[("apps", "statefulsets")] == ["get", "list", "watch"]
    assert "--contract-jobs" not in one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]


def workload_rules(rollouts):
    def rule(group, version, resources):
        return {
            "apiGroups": [group],
            "apiVersions": [version],
            "operations": ["CREATE", "UPDATE"],
            "resources": resources,
            "scope": "Namespaced",
        }

    rules = [rule("apps", "v1", ["deployments", "statefulsets"]), rule("batch", "v1", ["jobs", "cronjobs"])]
    return rules + [rule("argoproj.io", "v1alpha1", ["rollouts"])] if rollouts else rules


@pytest.mark.parametrize("setting, rollouts", [(True, True), (False, False), ("auto", False)])
def test_the_webhook_covers_every_workload_and_rollouts_when_told(setting, rollouts):
    docs = render({**values_for("secret"), "injection": {"argoRollouts": setting}})
    (hook,) = one(docs, "MutatingWebhookConfiguration")["webhooks"]
    assert hook["rules"] == workload_rules(rollouts)
    if rollouts:
        # The same resources as the admission policies of policy mode.
        policy = json.loads(subprocess.run([str(BIN), "policy", "-o", "json"], check=True, capture_output=True).stdout)
        assert hook["rules"] == policy["items"][0]["spec"]["matchConstraints"]["resourceRules"]


def server_args(docs):
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container["args"]


def test_code_delivery_reaches_the_webhook_and_a_bad_value_is_refused():
    assert "--code-delivery=copy" in server_args(render(values_for("generate")))
    docs = render({**values_for("generate"), "codeDelivery": "imageVolume"})
    assert "--code-delivery=imageVolume" in server_args(docs)
    with pytest.raises(helm.HelmError) as error:
        render({**values_for("generate"), "codeDelivery": "volume"})
    assert "codeDelivery" in str(error.value) and "imageVolume" in str(error.value), error.value
    report = helm.lint(CHART, {**values_for("generate"), "codeDelivery": "imageVolume"}, strict=True)
    assert not [m for m in report["messages"] if m["severity"] >= 2], report


def test_a_bad_argo_rollouts_value_is_refused_with_what_is_allowed():
    with pytest.raises(helm.HelmError) as error:
        render({**values_for("generate"), "injection": {"argoRollouts": "yes"}})
    assert "argoRollouts" in str(error.value), error.value


@pytest.mark.parametrize("mode", list(TLS_MODES))
def test_webhook_configuration_follows_the_design(mode):
    docs = render(values_for(mode))
    config = one(docs, "MutatingWebhookConfiguration")
    (hook,) = config["webhooks"]
    assert hook["failurePolicy"] == "Fail"
    assert hook["timeoutSeconds"] == 5
    assert hook["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["matchPolicy"] == "Equivalent"
    # Rendered without a cluster, `argoRollouts: auto` sees no Rollout CRD.
    assert hook["rules"] == workload_rules(rollouts=False)
    assert hook["objectSelector"] == {"matchLabels": {"django-migrate.io/inject": "true"}}
    (expr,) = hook["namespaceSelector"]["matchExpressions"]
    assert expr["key"] == "kubernetes.io/metadata.name" and expr["operator"] == "NotIn"
    assert set(expr["values"]) == {"kube-system", "kube-public", "kube-node-lease", NAMESPACE}
    service = one(docs, "Service")["metadata"]["name"]
    assert hook["clientConfig"]["service"] == {"name": service, "namespace": NAMESPACE, "path": "/mutate", "port": 443}
    volume = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"]
    if mode == "certManager":
        assert "caBundle" not in hook["clientConfig"]
        cert = one(docs, "Certificate")
        assert (
            config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
            == f"{NAMESPACE}/{cert['metadata']['name']}"
        )
        assert cert["spec"]["secretName"] == volume
        assert f"{service}.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]
        assert one(docs, "Issuer")["spec"] == {"selfSigned": {}}
    else:
        assert base64.b64decode(hook["clientConfig"]["caBundle"]).startswith(b"-----BEGIN CERTIFICATE-----")
    if mode == "secret":
        assert volume == "my-webhook-tls"
        assert not [d for d in docs if d["kind"] == "Secret"]


def test_generated_certificate_is_signed_by_the_ca_bundle_and_names_the_service(tmp_path):
    docs = render()
    secret = one(docs, "Secret")
    hook = one(docs, "MutatingWebhookConfiguration")["webhooks"][0]
    assert secret["data"]["ca.crt"] == hook["clientConfig"]["caBundle"]
    for name in ("ca.crt", "tls.crt", "tls.key"):
        (tmp_path / name).write_bytes(base64.b64decode(secret["data"][name]))
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", tmp_path / "ca.crt", tmp_path / "tls.crt"], capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stderr
    sans = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", tmp_path / "tls.crt"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    service = one(docs, "Service")["metadata"]["name"]
    for name in (service, f"{service}.{NAMESPACE}", f"{service}.{NAMESPACE}.svc"):
        assert f"DNS:{name}," in sans + ",", sans
    assert (
        secret["metadata"]["name"]
        == one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"]
    )


def test_the_injected_image_can_be_mirrored():
    docs = render(
        {
            "image": {"tag": "9.9.9"},
            "injection": {"image": {"repository": "mirror.internal/django-migrate-webhook", "pullPolicy": "Always"}},
        }
    )
    args = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--code-image=mirror.internal/django-migrate-webhook:9.9.9" in args
    assert "--code-image-pull-policy=Always" in args


def test_non_default_values_are_honoured():
    docs = render(
        {
            "replicaCount": 3,
            "priorityClassName": "system-cluster-critical",
            "controller": {"enabled": False},
            "webhook": {
                "failurePolicy": "Ignore",
                "timeoutSeconds": 10,
                "namespaceSelector": {"matchLabels": {"team": "django"}},
            },
            "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
            "podDisruptionBudget": {"enabled": False},
        }
    )
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["template"]["spec"]["priorityClassName"] == "system-cluster-critical"
    assert "--controller" not in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    hook = one(docs, "MutatingWebhookConfiguration")["webhooks"][0]
    assert hook["failurePolicy"] == "Ignore" and hook["timeoutSeconds"] == 10
    assert hook["namespaceSelector"]["matchLabels"] == {"team": "django"}
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    kinds = {d["kind"] for d in docs if not is_hook(d)}
    assert not kinds & {"PodDisruptionBudget", "ClusterRole", "Role"}


@pytest.mark.parametrize(
    "bad",
    [
        {"replicaCount": "two"},
        {"replicaCount": 0},
        {"unknownKey": True},
        {"webhook": {"failurePolicy": "Sometimes"}},
        {"webhook": {"timeoutSeconds": 60}},
        {"webhook": {"url": "http://insecure.example/mutate"}},
        {"tls": {"mode": "selfmade"}},
        {"image": {"tag": 1.2}},
        {"controller": {"enabled": "yes"}},
        {"injection": {"image": {"pullPolicy": "Sometimes"}}},
        {"injection": {"registry": "x"}},
    ],
)
def test_schema_rejects_bad_values(bad):
    chart = helm.Chart.load(CHART)
    with pytest.raises(helm.HelmValuesError):
        chart.render(bad, name=RELEASE, namespace=NAMESPACE)


def test_secret_mode_without_its_values_fails_with_a_clear_message():
    with pytest.raises(helm.HelmError) as error:
        render({"tls": {"mode": "secret"}})
    assert "tls.secret.name is required" in str(error.value) or "tls.secret.caBundle" in str(error.value)


def server_side_dry_run(docs, namespace):
    manifest = "\n---\n".join(yaml.safe_dump(d) for d in docs)
    result = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=manifest)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("mode", list(TLS_MODES))
def test_the_api_server_accepts_every_rendered_object(mode):
    """cert-manager's Issuer and Certificate need its CRDs, which the test control plane
    does not have: those two are left out of the dry run, every other object goes in."""
    kubectl("create", "namespace", NAMESPACE)
    docs = render(values_for(mode))
    docs = [d for d in docs if d["kind"] not in ("Issuer", "Certificate")]
    server_side_dry_run(docs, NAMESPACE)


def serves_rollouts():
    """Whether the API server serves Argo Rollouts' Rollout, as Helm's capabilities read it."""
    found = kubectl("get", "--raw", "/apis/argoproj.io/v1alpha1")
    return found.returncode == 0 and '"rollouts"' in found.stdout


VERBS = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]


def assert_service_account_can_do_exactly_what_the_controller_needs(namespace, heal=False, contract_jobs=True):
    """`kubectl auth can-i` as the installed chart's ServiceAccount, asked by the real API
    server's RBAC authorizer: the controller's verbs and not one more."""
    user = f"system:serviceaccount:{namespace}:dmw-django-migrate-webhook"
    needed = {
        ("pods", None): {"get", "list", "watch"},
        ("pods --subresource=status", None): {"patch"},
        ("replicasets.apps", None): {"list"} if contract_jobs else set(),
        ("controllerrevisions.apps", None): {"list"} if contract_jobs else set(),
        ("statefulsets.apps", None): {"get", "list", "watch"} | ({"patch"} if heal or contract_jobs else set()),
        ("events", None): {"create", "patch"},
        ("events.events.k8s.io", None): {"create", "patch"},
        ("leases.coordination.k8s.io", namespace): {"get", "create", "update", "patch"},
        ("leases.coordination.k8s.io", "default"): set(),
        ("secrets", None): set(),
        ("configmaps", None): set(),
        ("deployments.apps", None): {"get", "list", "watch"} | ({"patch"} if heal or contract_jobs else set()),
        ("mutatingwebhookconfigurations.admissionregistration.k8s.io", None): set(),
        ("jobs.batch", None): {"list", "watch"} | ({"create", "get"} if contract_jobs else set()),
        ("cronjobs.batch", None): {"list", "watch"} | ({"patch"} if heal else set()),
        # `injection.argoRollouts: auto` follows the cluster (the policy tier installs the CRD).
        ("rollouts.argoproj.io", None): (
            ({"get", "list", "watch"} | ({"patch"} if heal or contract_jobs else set())) if serves_rollouts() else set()
        ),
    }
    wrong = []
    for (resource, ns), verbs in needed.items():
        where = ["-n", ns] if ns else ["--all-namespaces"]
        for verb in VERBS:
            answer = kubectl("auth", "can-i", verb, *resource.split(), "--as", user, *where).stdout.strip()
            if (answer == "yes") != (verb in verbs):
                wrong.append(f"{verb} {resource} {ns or 'all namespaces'}: {answer}")
    assert not wrong, "\n".join(wrong)


def test_install_and_upgrade_keep_the_generated_ca():
    """A real `helm install` and `helm upgrade` against the test control plane: the
    upgrade looks the Secret up and keeps its CA instead of re-rolling it."""
    kubectl("version")
    namespace = f"dmw-install-{os.getpid()}"
    # Select no namespace, so that this release's webhook never stands in other tests' way.
    # Its pods stay off the node tier's real node: this test is about the chart's objects.
    values = {
        "webhook": {"namespaceSelector": {"matchLabels": {"django-migrate-test": "none"}}},
        "nodeSelector": {"e2e.invalid/no-such-node": "true"},
    }
    config = helm.Config(namespace=namespace)
    try:
        config.install(CHART, "dmw", values, namespace=namespace, create_namespace=True, timeout=120)
        first = json.loads(
            kubectl("get", "secret", "dmw-django-migrate-webhook-tls", "-n", namespace, "-o", "json").stdout
        )
        config.upgrade(CHART, "dmw", {**values, "replicaCount": 3}, namespace=namespace, timeout=120)
        second = json.loads(
            kubectl("get", "secret", "dmw-django-migrate-webhook-tls", "-n", namespace, "-o", "json").stdout
        )
        assert second["data"] == first["data"], "the upgrade re-rolled the certificate"
        hook = json.loads(
            kubectl("get", "mutatingwebhookconfiguration", "dmw-django-migrate-webhook", "-o", "json").stdout
        )
        assert hook["webhooks"][0]["clientConfig"]["caBundle"] == first["data"]["ca.crt"]
        deployment = json.loads(
            kubectl("get", "deployment", "dmw-django-migrate-webhook", "-n", namespace, "-o", "json").stdout
        )
        assert deployment["spec"]["replicas"] == 3
        assert_service_account_can_do_exactly_what_the_controller_needs(namespace)
    finally:
        try:
            config.uninstall("dmw", ignore_not_found=True)
        except helm.HelmError:
            pass
        kubectl("delete", "namespace", namespace, "--wait=false")
