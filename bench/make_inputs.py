#!/usr/bin/env python3
"""Writes the AdmissionReview inputs of the benchmarks into tests/fixtures/bench/.

small:   one container, nothing else (~2 KB)
typical: a Django Deployment as a cluster stores it: env, envFrom, mounts, probes,
         resources, managedFields (~4 KB)
large:   3 containers, 40 env vars each, many volumes (~35 KB)
update:  the typical Deployment being labelled: oldObject without the label, object with
         it and a new image (~8 KB)
rollout: a new image for the typical Deployment once it is injected: object and
         oldObject both carry the injected init containers, as `kubectl apply` or
         `kubectl set image` sends them (~12 KB)

The injected form comes from the project's own `inject` command (built if needed).

The output is deterministic, so re-running this leaves the files unchanged.
"""

import copy
import json
import pathlib
import subprocess

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "bench"


def review(obj, operation="CREATE", old=None):
    request = {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
        "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
        "requestKind": {"group": "apps", "version": "v1", "kind": "Deployment"},
        "requestResource": {"group": "apps", "version": "v1", "resource": "deployments"},
        "name": obj["metadata"]["name"],
        "namespace": obj["metadata"]["namespace"],
        "operation": operation,
        "userInfo": {
            "username": "system:serviceaccount:ci:deployer",
            "uid": "2b0b8b7e-3f5e-4a7e-9c55-5d1b0a3f6c11",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:ci", "system:authenticated"],
        },
        "object": obj,
        "oldObject": old,
        "dryRun": False,
        "options": {
            "kind": "CreateOptions" if operation == "CREATE" else "UpdateOptions",
            "apiVersion": "meta.k8s.io/v1",
            "fieldManager": "kubectl-client-side-apply",
        },
    }
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def deployment(name, containers, volumes=(), managed=False, extra_annotations=None):
    meta = {
        "name": name,
        "namespace": "shop",
        "uid": "8c1d4b7a-2f11-4c55-9a2e-0b7f3e1c9d21",
        "generation": 1,
        "creationTimestamp": "2026-11-24T10:00:00Z",
        "labels": {"app": name, "django-migrate.io/inject": "true"},
        "annotations": {"django-migrate.io/database": "postgresql", **(extra_annotations or {})},
    }
    if managed:
        meta["managedFields"] = [
            {
                "manager": "kubectl-client-side-apply",
                "operation": "Update",
                "apiVersion": "apps/v1",
                "time": "2026-11-24T10:00:00Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:metadata": {
                        "f:annotations": {
                            ".": {},
                            "f:django-migrate.io/database": {},
                            "f:kubectl.kubernetes.io/last-applied-configuration": {},
                        },
                        "f:labels": {".": {}, "f:app": {}, "f:django-migrate.io/inject": {}},
                    },
                    "f:spec": {
                        "f:progressDeadlineSeconds": {},
                        "f:replicas": {},
                        "f:revisionHistoryLimit": {},
                        "f:selector": {},
                        "f:strategy": {
                            "f:rollingUpdate": {".": {}, "f:maxSurge": {}, "f:maxUnavailable": {}},
                            "f:type": {},
                        },
                        "f:template": {
                            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                            "f:spec": {
                                "f:containers": {
                                    'k:{"name":"web"}': {
                                        ".": {},
                                        "f:env": {},
                                        "f:envFrom": {},
                                        "f:image": {},
                                        "f:livenessProbe": {},
                                        "f:readinessProbe": {},
                                        "f:ports": {},
                                        "f:resources": {},
                                        "f:volumeMounts": {},
                                    }
                                },
                                "f:volumes": {},
                            },
                        },
                    },
                },
            }
        ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 3,
            "revisionHistoryLimit": 10,
            "progressDeadlineSeconds": 600,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": containers,
                    "volumes": list(volumes),
                    "restartPolicy": "Always",
                    "terminationGracePeriodSeconds": 30,
                    "dnsPolicy": "ClusterFirst",
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000},
                    "schedulerName": "default-scheduler",
                },
            },
        },
        "status": {},
    }


def probe(path):
    return {
        "httpGet": {"path": path, "port": 8000, "scheme": "HTTP"},
        "initialDelaySeconds": 5,
        "periodSeconds": 10,
        "timeoutSeconds": 2,
        "successThreshold": 1,
        "failureThreshold": 3,
    }


def web_container(image="registry.example.com/shop/web:1.42.0", env_count=6, mounts=2, name="web"):
    env = [
        {"name": "DJANGO_SETTINGS_MODULE", "value": "shop.settings.production"},
        {"name": "DATABASE_HOST", "value": "postgres.shop.svc.cluster.local"},
        {"name": "DATABASE_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "shop-db", "key": "password"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
    ]
    env += [
        {"name": f"SHOP_SETTING_{i:02}", "value": f"value-{i:02}-" + "x" * 24}
        for i in range(max(0, env_count - len(env)))
    ]
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["gunicorn", "shop.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3"],
        "ports": [{"name": "http", "containerPort": 8000, "protocol": "TCP"}],
        "env": env[:env_count] if env_count >= 4 else env,
        "envFrom": [{"configMapRef": {"name": "shop-config"}}, {"secretRef": {"name": "shop-secrets"}}],
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
        "volumeMounts": [{"name": f"data-{i}", "mountPath": f"/srv/data/{i}"} for i in range(mounts)],
        "livenessProbe": probe("/healthz"),
        "readinessProbe": probe("/readyz"),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    }


def volumes(n):
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append({"name": f"data-{i}", "emptyDir": {}})
        elif i % 3 == 1:
            out.append({"name": f"data-{i}", "configMap": {"name": f"shop-files-{i}", "defaultMode": 420}})
        else:
            out.append({"name": f"data-{i}", "secret": {"secretName": f"shop-secret-{i}", "defaultMode": 256}})
    return out


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    small_container = {
        "name": "web",
        "image": "registry.example.com/shop/web:1.42.0",
        "command": ["gunicorn", "shop.wsgi"],
        "env": [{"name": "DJANGO_SETTINGS_MODULE", "value": "shop.settings"}],
    }
    small = review(deployment("shop", [small_container]))
    typical_obj = deployment("shop", [web_container()], volumes(2), managed=True)
    typical = review(typical_obj)
    large_containers = [web_container(env_count=40, mounts=12)]
    large_containers += [web_container(name=n, env_count=40, mounts=12) for n in ("worker", "beat")]
    large_obj = deployment(
        "shop", large_containers, volumes(24), managed=True, extra_annotations={"django-migrate.io/container": "web"}
    )
    large_obj["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = json.dumps(
        {"apiVersion": "apps/v1", "kind": "Deployment", "spec": large_obj["spec"]}, separators=(",", ":")
    )
    large = review(large_obj)
    injected = json.loads(
        subprocess.run(
            ["cargo", "run", "--quiet", "--release", "--", "inject", "-o", "json", "-f", "-"],
            input=json.dumps(typical_obj),
            capture_output=True,
            text=True,
            check=True,
            cwd=OUT.parent.parent.parent,
        ).stdout
    )
    old_obj = copy.deepcopy(injected)
    new_obj = copy.deepcopy(injected)
    new_obj["metadata"]["generation"] = 2
    new_obj["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.example.com/shop/web:1.43.0"
    rollout = review(new_obj, operation="UPDATE", old=old_obj)
    unlabelled = copy.deepcopy(typical_obj)
    del unlabelled["metadata"]["labels"]["django-migrate.io/inject"]
    labelled = copy.deepcopy(typical_obj)
    labelled["metadata"]["generation"] = 2
    labelled["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.example.com/shop/web:1.43.0"
    update = review(labelled, operation="UPDATE", old=unlabelled)
    docs = (("small", small), ("typical", typical), ("large", large), ("update", update), ("rollout", rollout))
    for name, doc in docs:
        text = json.dumps(doc, separators=(",", ":"))
        (OUT / f"{name}.json").write_text(text)
        print(f"{name}: {len(text)} bytes")


if __name__ == "__main__":
    main()
