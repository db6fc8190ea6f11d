//! Property tests over generated Deployments: the rules of DESIGN.md's "Rules the
//! mutation must keep" hold for any shape of Deployment, not only the fixtures.

use django_migrate_webhook::mutation::{Operation, mutate};
use django_migrate_webhook::workload::Workload;
use django_migrate_webhook::{injected, names};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use crate::support::*;

fn env_var() -> impl Strategy<Value = Value> {
    ("[A-Z][A-Z_]{0,6}", "[ -~]{0,12}", any::<bool>()).prop_map(|(name, value, secret)| {
        if secret {
            json!({"name": name, "valueFrom": {"secretKeyRef": {"name": "s", "key": value}}})
        } else {
            json!({"name": name, "value": value})
        }
    })
}

fn container(name: String) -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec![
            "app:1",
            "app:2",
            "nginx:1.27",
            "reg.example/x/y@sha256:00",
        ]),
        prop::collection::vec(env_var(), 0..4),
        prop::option::of(Just(json!([{"configMapRef": {"name": "cfg"}}]))),
        prop::option::of(Just(json!([{"name": "data", "mountPath": "/data"}]))),
        prop::option::of(prop::sample::select(vec!["/app", "/srv/app"])),
        prop::option::of(Just(
            json!({"runAsNonRoot": true, "readOnlyRootFilesystem": true}),
        )),
        prop::option::of(Just(
            json!({"requests": {"cpu": "100m"}, "limits": {"memory": "1Gi"}}),
        )),
        prop::option::of(prop::sample::select(vec!["Always", "IfNotPresent"])),
    )
        .prop_map(move |(image, env, env_from, mounts, wd, sc, res, pull)| {
            let mut c = Map::new();
            c.insert("name".into(), json!(name));
            c.insert("image".into(), json!(image));
            if !env.is_empty() {
                c.insert("env".into(), json!(env));
            }
            for (k, v) in [
                ("envFrom", env_from),
                ("volumeMounts", mounts),
                ("workingDir", wd.map(Value::from)),
                ("securityContext", sc),
                ("resources", res),
                ("imagePullPolicy", pull.map(Value::from)),
            ] {
                if let Some(v) = v {
                    c.insert(k.into(), v);
                }
            }
            Value::Object(c)
        })
}

fn init_container() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        "fetch-secrets",
        "cloudsql-proxy",
        "django-migrate",
        "django-wait-for-db",
        "django-wait-for-migrations",
    ])
    .prop_map(|name| json!({"name": name, "image": "tool:1", "args": ["run"]}))
}

/// A Deployment with a random shape; `choice` picks settings and the app container.
fn deployment() -> impl Strategy<Value = Value> {
    (
        1usize..4,
        prop::collection::vec(init_container(), 0..3),
        prop::option::of(prop::collection::vec(
            prop::sample::select(vec!["example.com/ready", "django-migrate.io/migrated"]),
            0..2,
        )),
        0u8..4,
        prop::collection::btree_map(
            prop::sample::select(vec!["app", "a~b", "x/y~z", "tier"]),
            "[a-z]{1,5}",
            0..3,
        ),
        prop::option::of(prop::sample::select(vec!["migrate", "wait"])),
        prop::option::of(prop::sample::select(vec!["true", "false"])),
        any::<bool>(),
        0usize..4,
        prop::option::of(1i64..5),
    )
        .prop_flat_map(
            |(n, init, gates, meta_shape, labels, mode, gate, opted_in, pick, replicas)| {
                let containers: Vec<_> = (0..n).map(|i| container(format!("c{i}"))).collect();
                (
                    containers,
                    Just((init, gates, meta_shape, labels, mode, gate, opted_in, pick, replicas)),
                )
            },
        )
        .prop_map(|(containers, (init, gates, meta_shape, labels, mode, gate, opted_in, pick, replicas))| {
            let mut annotations = Map::new();
            if let Some(m) = mode {
                annotations.insert("django-migrate.io/mode".into(), json!(m));
            }
            if let Some(g) = gate {
                annotations.insert("django-migrate.io/readiness-gate".into(), json!(g));
            }
            if pick < containers.len() && pick > 0 {
                annotations.insert("django-migrate.io/container".into(), json!(format!("c{pick}")));
            }
            let mut spec = Map::new();
            spec.insert("containers".into(), json!(containers));
            if !init.is_empty() {
                spec.insert("initContainers".into(), json!(init));
            }
            if let Some(g) = gates {
                let g: Vec<Value> = g.into_iter().map(|t| json!({"conditionType": t})).collect();
                spec.insert("readinessGates".into(), json!(g));
            }
            let mut template = Map::new();
            match meta_shape {
                0 => {}
                1 => {
                    template.insert("metadata".into(), json!({}));
                }
                2 => {
                    template.insert("metadata".into(), json!({"labels": labels}));
                }
                _ => {
                    template.insert(
                        "metadata".into(),
                        json!({"labels": labels, "annotations": {"kubectl.kubernetes.io/default-container": "c0"}}),
                    );
                }
            }
            template.insert("spec".into(), Value::Object(spec));
            let mut meta_labels = Map::new();
            meta_labels.insert("app".into(), json!("x"));
            if opted_in {
                meta_labels.insert("django-migrate.io/inject".into(), json!("true"));
            }
            let mut d = json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "gen", "labels": meta_labels, "annotations": annotations},
                "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template},
            });
            if let Some(r) = replicas {
                d["spec"]["replicas"] = json!(r);
            }
            d
        })
}

fn run(op: Operation, new: &Value, old: Option<&Value>) -> (Value, json_patch::Patch) {
    let parse = |v: &Value| serde_json::from_value::<Workload>(v.clone()).unwrap();
    let old_parsed = old.map(parse);
    let m = mutate(op, &parse(new), old_parsed.as_ref(), &Default::default())
        .expect("valid settings are not denied");
    let mut out = new.clone();
    json_patch::patch(&mut out, &m.patch).expect("the patch applies to the object");
    (out, m.patch)
}

fn app_of(d: &Value) -> Value {
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    let chosen = d["metadata"]["annotations"]["django-migrate.io/container"]
        .as_str()
        .or_else(|| {
            d.pointer(
                "/spec/template/metadata/annotations/kubectl.kubernetes.io~1default-container",
            )
            .and_then(Value::as_str)
        });
    chosen
        .and_then(|n| containers.iter().find(|c| c["name"] == n))
        .unwrap_or(&containers[0])
        .clone()
}

fn injected_containers(d: &Value) -> Vec<Value> {
    d.pointer("/spec/template/spec/initContainers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|c| c["name"].as_str().is_some_and(injected::is_reserved))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn injection_keeps_the_rules(input in deployment()) {
        let opted_in = input["metadata"]["labels"]["django-migrate.io/inject"] == "true";
        let (out, patch) = run(Operation::Create, &input, None);
        if !opted_in {
            prop_assert!(patch.0.is_empty(), "not opted in but patched: {:?}", patch);
            return Ok(());
        }
        assert_valid_workload(&out);
        // Nothing outside the injected fields changes.
        prop_assert_eq!(without_owned(&out), without_owned(&input));
        // Our containers come last, copied from the app container.
        let init = out["spec"]["template"]["spec"]["initContainers"].as_array().unwrap();
        let ours = injected_containers(&out);
        prop_assert_eq!(ours.len(), 2);
        prop_assert_eq!(&init[init.len() - 2..], &ours[..]);
        let app = app_of(&input);
        prop_assert_eq!(&ours[0]["name"], names::CODE_CONTAINER);
        prop_assert_eq!(&ours[0]["image"], injected::default_image());
        for c in &ours[1..] {
            prop_assert_eq!(&c["image"], &app["image"]);
            prop_assert_eq!(c.get("workingDir"), app.get("workingDir"));
            prop_assert_eq!(c.get("securityContext"), app.get("securityContext"));
        }
        // Idempotent, as CREATE and as UPDATE.
        let (_, again) = run(Operation::Create, &out, None);
        prop_assert!(again.0.is_empty(), "second pass patched: {:?}", again);
        let (_, again) = run(Operation::Update, &out, Some(&input));
        prop_assert!(again.0.is_empty());
        // Stable: changes the injection does not depend on leave the template alone.
        let mut scaled = out.clone();
        scaled["spec"]["replicas"] = json!(7);
        scaled["metadata"]["annotations"]["team"] = json!("payments");
        let (_, p) = run(Operation::Update, &scaled, Some(&out));
        prop_assert!(p.0.is_empty());
        // The injected containers follow the app image.
        let mut bumped = out.clone();
        let name = app["name"].clone();
        for c in bumped["spec"]["template"]["spec"]["containers"].as_array_mut().unwrap() {
            if c["name"] == name {
                c["image"] = json!("app:99");
            }
        }
        let (followed, _) = run(Operation::Update, &bumped, Some(&out));
        for c in &injected_containers(&followed)[1..] {
            prop_assert_eq!(&c["image"], "app:99");
        }
        // Clean opt-out.
        let mut removed = out.clone();
        removed["metadata"]["labels"].as_object_mut().unwrap().remove("django-migrate.io/inject");
        let (stripped, _) = run(Operation::Update, &removed, Some(&out));
        prop_assert!(injected_containers(&stripped).is_empty());
        prop_assert_eq!(without_owned(&stripped), without_owned(&removed));
        prop_assert!(stripped.pointer("/spec/template/metadata/labels/django-migrate.io~1injected").is_none());
        assert_valid_workload(&stripped);
    }
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[ -~]{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every JSON pointer into `v`.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes get an answer, never a panic.
    #[test]
    fn review_answers_any_bytes(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let reply = django_migrate_webhook::admission::review(&body, &Default::default());
        prop_assert!(reply.status == 200 || reply.status == 400);
    }

    /// A real review with any one field replaced by any JSON value gets a 200 answer or
    /// a 400 with a message, never a panic.
    #[test]
    fn review_answers_any_field_of_any_type(pick in any::<prop::sample::Index>(), value in any_json()) {
        let mut review = with_code(read_json(&repo().join("tests/fixtures/admission/create-existing-init-containers.request.json")));
        let mut all = Vec::new();
        pointers(&review, String::new(), &mut all);
        let target = pick.get(&all).clone();
        *review.pointer_mut(&target).unwrap() = value;
        let reply = django_migrate_webhook::admission::review(&serde_json::to_vec(&review).unwrap(), &Default::default());
        prop_assert!(reply.status == 200 || reply.status == 400, "{target}: {}", reply.status);
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        if reply.status == 400 {
            prop_assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }
}
