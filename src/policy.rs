//! `policy` mode: the injection as a MutatingAdmissionPolicy, the webhook's denials and
//! warnings as two ValidatingAdmissionPolicies, so that no server of ours is in the API
//! server's write path (`admissionregistration.k8s.io/v1`, served from Kubernetes 1.36).
//!
//! Every expression is generated here from what the webhook itself uses: the names of
//! `names`, the defaults of `Settings::default`, the texts of `settings::allowed`, the
//! containers of `injected`. The policy tier applies the same Deployments through the
//! webhook and through these policies and compares what the API server stores.
//!
//! The mutation is a JSON Patch that rewrites whole lists (init containers, volumes,
//! readiness gates) from the incoming object, so running it again changes nothing, and an
//! opt-out removes everything it added. The policies are compiled without schema types,
//! so objects are built with `Object.<path>{...}` initializers, as the API requires.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::injected::{self, CodeDelivery, CodeImage};
use crate::mutation::{self, DEFAULT_CONTAINER_ANNOTATION, MAX_WARNING_LEN};
use crate::names::{
    CODE_CONTAINER, CODE_MOUNT_PATH, CODE_VOLUME, CONTRACTED_RELEASES, CRONJOB_LABEL,
    ENV_ALLOW_UNSAFE, ENV_DATABASE, ENV_DEFER, ENV_FAST_PATH, ENV_HOLD_BACK, ENV_LOCK_TIMEOUT,
    ENV_LOCKING_MIN_ROWS, ENV_MANAGE_COMMAND, ENV_MIGRATE_TIMEOUT, ENV_MODE, ENV_POST_MIGRATE,
    ENV_SETTINGS_MODULE, ENV_UNSAFE_MIGRATIONS, ENV_WAIT_TIMEOUT, INJECTED_LABEL, LEGACY_ENV,
    MIGRATE_CONTAINER, MIGRATED_CONDITION, POLICY_LABEL, PROGRAM_FILE, RESERVED_CONTAINERS,
    STEP_ENV, TERMINATION_LOG, WAIT_CONTAINER,
};
use crate::settings::{
    self, ALLOW_UNSAFE, CONTAINER, CONTRACT_DELAY, DATABASE, DEFER, FAST_PATH, HOLD_BACK,
    INJECT_LABEL, KNOWN_ANNOTATIONS, LOCK_TIMEOUT, LOCKING_MIN_ROWS, MANAGE_COMMAND, MANAGE_PY,
    MAX_LOCK_TIMEOUT_SECONDS, MAX_TIMEOUT_SECONDS, MIGRATE_TIMEOUT, MODE, POST_MIGRATE, PREFIX,
    PYTHON, READINESS_GATE_ANNOTATION, SETTINGS_MODULE, Settings, UNSAFE_MIGRATIONS,
    USE_IMAGE_ENTRYPOINT, WAIT_TIMEOUT,
};
use crate::workload::Kind;

/// The API version of the policies: GA from Kubernetes 1.36.
pub const API_VERSION: &str = "admissionregistration.k8s.io/v1";

/// What the policies are named and which Deployments they apply to.
#[derive(Clone, Debug)]
pub struct PolicyOptions {
    /// The MutatingAdmissionPolicy's name; the validating ones add `-settings` and
    /// `-warnings`, and each binding has its policy's name.
    pub name: String,
    /// The webhook's own image, which the code-copy container runs.
    pub image: CodeImage,
    /// Namespaces never touched (the webhook configuration's `excludeNamespaces`).
    pub exclude_namespaces: Vec<String>,
    /// `Fail` (a policy that cannot be evaluated rejects the request) or `Ignore`.
    pub failure_policy: String,
    /// Written where `image.delivery` would be, for the chart to fill in.
    pub delivery_placeholder: Option<&'static str>,
}

impl Default for PolicyOptions {
    fn default() -> Self {
        PolicyOptions {
            name: "django-migrate-webhook".to_owned(),
            image: CodeImage::default(),
            exclude_namespaces: vec!["kube-system".to_owned()],
            failure_policy: "Fail".to_owned(),
            delivery_placeholder: None,
        }
    }
}

/// The six objects: the mutating policy and binding, then the settings (deny) and
/// warnings (warn) validating policies and their bindings.
pub fn objects(o: &PolicyOptions) -> Vec<Value> {
    let settings = format!("{}-settings", o.name);
    let warnings = format!("{}-warnings", o.name);
    vec![
        mutating_policy(o),
        binding("MutatingAdmissionPolicyBinding", &o.name, "inject", o, None),
        validating_policy(&settings, &o.failure_policy, &settings_validations()),
        binding(
            "ValidatingAdmissionPolicyBinding",
            &settings,
            "settings",
            o,
            Some("Deny"),
        ),
        // A warning that cannot be evaluated must never block an apply.
        validating_policy(&warnings, "Ignore", &warning_validations()),
        binding(
            "ValidatingAdmissionPolicyBinding",
            &warnings,
            "warnings",
            o,
            Some("Warn"),
        ),
    ]
}

/// The three policies without their bindings (the chart writes its own bindings, with
/// its namespace selectors).
pub fn policies(o: &PolicyOptions) -> Vec<Value> {
    objects(o).into_iter().step_by(2).collect()
}

/// Every kind the webhook injects, one rule per API group. A rule for Rollouts is
/// harmless where Argo Rollouts is not installed: nothing matches it.
fn match_constraints() -> Value {
    let mut rules: Vec<Value> = Vec::new();
    for kind in Kind::ALL {
        let same_group = rules
            .iter_mut()
            .find(|r| r["apiGroups"][0] == kind.group() && r["apiVersions"][0] == kind.version());
        match same_group {
            Some(rule) => {
                if let Some(resources) = rule["resources"].as_array_mut() {
                    resources.push(kind.plural().into());
                }
            }
            None => rules.push(json!({
                "apiGroups": [kind.group()],
                "apiVersions": [kind.version()],
                "operations": ["CREATE", "UPDATE"],
                "resources": [kind.plural()],
                "scope": "Namespaced",
            })),
        }
    }
    json!({"matchPolicy": "Equivalent", "resourceRules": rules})
}

fn mutating_policy(o: &PolicyOptions) -> Value {
    let mut variables = common_variables();
    variables.extend(injection_variables(
        o.delivery_placeholder
            .unwrap_or_else(|| o.image.delivery.as_str()),
    ));
    json!({
        "apiVersion": API_VERSION,
        "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": o.name, "labels": labels("inject")},
        "spec": {
            "failurePolicy": o.failure_policy,
            "reinvocationPolicy": "IfNeeded",
            "matchConstraints": match_constraints(),
            "variables": to_variables(&variables),
            "mutations": [{
                "patchType": "JSONPatch",
                "jsonPatch": {"expression": patch_expression(&o.image)},
            }],
        },
    })
}

/// The labels of each object: the project's name and the object's role.
fn labels(role: &str) -> Value {
    json!({"app.kubernetes.io/name": "django-migrate-webhook", POLICY_LABEL: role})
}

fn validating_policy(name: &str, failure_policy: &str, validations: &[Value]) -> Value {
    let role = name.rsplit('-').next().unwrap_or_default();
    json!({
        "apiVersion": API_VERSION,
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name, "labels": labels(role)},
        "spec": {
            "failurePolicy": failure_policy,
            "matchConstraints": match_constraints(),
            "variables": to_variables(&common_variables()),
            "validations": validations,
        },
    })
}

/// Selects what the webhook configuration selects: Deployments whose stored or incoming
/// object carries the opt-in label, outside the excluded namespaces.
fn binding(
    kind: &str,
    policy: &str,
    role: &str,
    o: &PolicyOptions,
    actions: Option<&str>,
) -> Value {
    let mut spec = json!({
        "policyName": policy,
        "matchResources": {
            "objectSelector": {"matchLabels": {INJECT_LABEL: "true"}},
            "namespaceSelector": {"matchExpressions": [{
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": o.exclude_namespaces,
            }]},
        },
    });
    if o.exclude_namespaces.is_empty()
        && let Some(m) = spec["matchResources"].as_object_mut()
    {
        m.remove("namespaceSelector");
    }
    if let Some(action) = actions {
        spec["validationActions"] = json!([action]);
    }
    json!({
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {"name": policy, "labels": labels(role)},
        "spec": spec,
    })
}

fn to_variables(vars: &[(&str, String)]) -> Value {
    Value::Array(
        vars.iter()
            .map(|(name, expression)| json!({"name": name, "expression": expression}))
            .collect(),
    )
}

// ---------------------------------------------------------------- CEL text

/// A CEL string literal.
fn lit(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            _ => out.push(c),
        }
    }
    out.push('\'');
    out
}

fn lits(items: &[&str]) -> String {
    let items: Vec<String> = items.iter().map(|s| lit(s)).collect();
    format!("[{}]", items.join(", "))
}

/// A JSON Pointer token (RFC 6901).
fn pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// A JSON value as CEL: objects as `Object.<path>{...}` initializers (the policy is
/// compiled without schema types, so any field name is accepted), arrays as lists.
fn cel(path: &str, v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lit(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(|i| cel(path, i)).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(fields) => {
            let fields: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("{k}: {}", cel(&format!("{path}.{k}"), v)))
                .collect();
            format!("{path}{{{}}}", fields.join(", "))
        }
    }
}

/// Rust's `{:?}` of a string, for the common characters: quoted, with `\` and `"`
/// escaped.
fn quoted(expr: &str) -> String {
    format!(
        r#"'"' + {expr}.replace('\\', '\\\\').replace('"', '\\"').replace('\n', '\\n').replace('\t', '\\t').replace('\r', '\\r') + '"'"#
    )
}

/// `text::cut` to `max` bytes, for ASCII text: the cut counts characters.
fn cut(expr: &str, max: usize) -> String {
    let keep = max - '…'.len_utf8();
    format!("(bytes({expr}).size() > {max} ? {expr}.substring(0, {keep}) + '…' : {expr})")
}

const INIT: &str = "Object.spec.template.spec.initContainers";

/// The pod template of `o` (`object` or `oldObject`), or an empty map: a CronJob's is
/// under `jobTemplate`, and a Rollout with a `workloadRef` has none.
fn template_of(o: &str) -> String {
    format!(
        "{o} == null ? {{}} : variables.kind == 'CronJob' ? (has({o}.spec.jobTemplate) && has({o}.spec.jobTemplate.spec) && has({o}.spec.jobTemplate.spec.template) ? {o}.spec.jobTemplate.spec.template : {{}}) : has({o}.spec.template) ? {o}.spec.template : {{}}"
    )
}

/// The pod spec of template expression `t`, or an empty map.
fn pod_of(t: &str) -> String {
    format!("has({t}.spec) ? {t}.spec : {{}}")
}

/// Whether `v` is a valid value of annotation `k`, as `Settings::from_annotations` decides.
fn valid(k: &str, v: &str) -> String {
    let plain = "'^[A-Za-z0-9._/+-]+$'";
    let seconds = |max: u32| {
        format!("({v}.matches('^0*[0-9]{{1,9}}$') && int({v}) >= 1 && int({v}) <= {max})")
    };
    let names = format!(
        "({v}.split(',').map(w, w.trim()).exists(w, w != '') && {v}.split(',').map(w, w.trim()).filter(w, w != '').all(w, w.matches('^[A-Za-z_][A-Za-z0-9_]*[.][A-Za-z0-9_]+$')))"
    );
    let rows = format!(
        "({v}.matches('^[0-9]+$') && ({v}.matches('^0*[0-9]{{1,19}}$') || ({v}.matches('^0*[1-9][0-9]{{19}}$') && {v}.find('[1-9][0-9]{{19}}$') <= '{}')))",
        u64::MAX
    );
    let arms = [
        (vec![CONTAINER], format!("{v} != ''")),
        (vec![MODE], format!("{v} in ['migrate', 'wait']")),
        (
            vec![MANAGE_PY, PYTHON, SETTINGS_MODULE],
            format!("{v}.matches({plain})"),
        ),
        (vec![DATABASE], format!("{v}.matches('^[A-Za-z0-9_-]+$')")),
        (vec![MANAGE_COMMAND, CONTRACTED_RELEASES], "true".to_owned()),
        (
            vec![WAIT_TIMEOUT, MIGRATE_TIMEOUT],
            seconds(MAX_TIMEOUT_SECONDS),
        ),
        (vec![LOCK_TIMEOUT], seconds(MAX_LOCK_TIMEOUT_SECONDS)),
        (
            vec![CONTRACT_DELAY],
            format!("({v} == '0' || {})", seconds(MAX_TIMEOUT_SECONDS)),
        ),
        (
            vec![UNSAFE_MIGRATIONS],
            format!("{v} in ['warn', 'deny', 'defer']"),
        ),
        (vec![ALLOW_UNSAFE, DEFER], names),
        (
            vec![HOLD_BACK],
            format!("{v}.split(',').all(w, w.trim() in ['breaking', 'locking'])"),
        ),
        (vec![LOCKING_MIN_ROWS], rows),
        (
            vec![
                READINESS_GATE_ANNOTATION,
                USE_IMAGE_ENTRYPOINT,
                FAST_PATH,
                POST_MIGRATE,
            ],
            format!("{v} in ['true', 'false']"),
        ),
    ];
    let mut out = String::new();
    for (keys, test) in arms {
        let _ = write!(out, "{k} in {} ? {test} : ", lits(&keys));
    }
    out.push_str("false");
    out
}

/// The `allowed: ...` text of annotation `k`, as the webhook's denial says it.
fn allowed(k: &str) -> String {
    let mut out = String::new();
    for a in KNOWN_ANNOTATIONS {
        if let Some(text) = settings::allowed(a) {
            let _ = write!(out, "{k} == {} ? {} : ", lit(a), lit(&text));
        }
    }
    out.push_str("''");
    out
}

/// A manage command: words of plain characters separated by Unicode white space, as
/// `str::split_whitespace` splits them.
const MANAGE_COMMAND_RE: &str = r"^[\t\n\v\f\r\x{85}\p{Z}]*[A-Za-z0-9._/+-]+([\t\n\v\f\r\x{85}\p{Z}]+[A-Za-z0-9._/+-]+)*[\t\n\v\f\r\x{85}\p{Z}]*$";

/// Variables of every policy: the settings' and then the template's.
fn common_variables() -> Vec<(&'static str, String)> {
    let mut v = settings_variables();
    v.extend(template_variables());
    v
}

/// The object's labels and annotations, whether it opted in, and the webhook's denial for
/// its settings (empty when there is none).
fn settings_variables() -> Vec<(&'static str, String)> {
    let a = "variables.ann";
    let first = "variables.badKeys.filter(k, variables.badKeys.all(j, k <= j))[0]";
    let value = |k: &str| format!("{a}[{k}]");
    let invalid = |k: &str| {
        format!(
            "'annotation ' + {k} + ': invalid value ' + {} + '; ' + ({})",
            quoted(&cut(&value(k), 100)),
            allowed(k)
        )
    };
    let known: Vec<&str> = KNOWN_ANNOTATIONS
        .iter()
        .map(|a| a.trim_start_matches(PREFIX))
        .collect();
    let annotation_error = format!(
        "variables.badKeys.size() > 0 ? 'django-migrate: ' + ({first} in {known} ? {inv} : 'unknown annotation ' + {first} + '; known: ' + {list}) : {mc} in {a} && !{a}[{mc}].matches({mc_re}) ? 'django-migrate: ' + {mc_inv} : ''",
        known = lits(&KNOWN_ANNOTATIONS),
        inv = invalid(first),
        list = lit(&known.join(", ")),
        mc = lit(MANAGE_COMMAND),
        mc_re = lit(MANAGE_COMMAND_RE),
        mc_inv = invalid(&lit(MANAGE_COMMAND)),
    );
    let containers = "variables.containers";
    let no_containers = crate::mutation::Denial::NoContainers.to_string();
    let no_such = format!(
        "'django-migrate: annotation {CONTAINER}: no container named ' + {} + ' in the pod template; allowed: one of ' + {containers}.map(c, {}).join(', ')",
        quoted(&value(&lit(CONTAINER))),
        quoted("(has(c.name) ? c.name : '')"),
    );
    let job_like: Vec<&str> = Kind::ALL
        .into_iter()
        .filter(|k| k.runs_to_completion())
        .map(Kind::as_str)
        .collect();
    vec![
        ("kind", "request.kind.kind".to_owned()),
        ("jobLike", format!("variables.kind in {}", lits(&job_like))),
        ("template", template_of("object")),
        (
            "tpath",
            format!(
                "variables.kind == 'CronJob' ? {} : {}",
                lit(Kind::CronJob.template_pointer()),
                lit(Kind::Deployment.template_pointer())
            ),
        ),
        // What the webhook leaves alone (`mutation::left_alone`): a Job made by a
        // CronJob, a Job's update, a Rollout without a pod template of its own.
        (
            "skip",
            "(variables.kind == 'Job' && (request.operation == 'UPDATE' || (has(object.metadata.ownerReferences) && object.metadata.ownerReferences.exists(o, has(o.kind) && o.kind == 'CronJob' && has(o.controller) && o.controller)))) || (variables.kind == 'Rollout' && !has(object.spec.template))".to_owned(),
        ),
        (
            "labels",
            "has(object.metadata.labels) ? object.metadata.labels : {}".to_owned(),
        ),
        (
            "optedIn",
            format!(
                "{0} in variables.labels && variables.labels[{0}] == 'true'",
                lit(INJECT_LABEL)
            ),
        ),
        (
            "ann",
            "has(object.metadata.annotations) ? object.metadata.annotations : {}".to_owned(),
        ),
        (
            "containers",
            "has(variables.template.spec) && has(variables.template.spec.containers) && variables.template.spec.containers != null ? variables.template.spec.containers : []".to_owned(),
        ),
        (
            "badKeys",
            format!(
                "{a}.filter(k, k.startsWith({}) && !({}))",
                lit(PREFIX),
                valid("k", &value("k"))
            ),
        ),
        ("annotationError", annotation_error),
        (
            "denial",
            format!(
                "variables.annotationError != '' ? variables.annotationError : {containers}.size() == 0 ? {} : {c} in {a} && !{containers}.exists(x, has(x.name) && x.name == {a}[{c}]) ? {no_such} : ''",
                lit(&no_containers),
                c = lit(CONTAINER),
            ),
        ),
    ]
}

/// Variables over the pod template: what the injection and the warnings read.
fn template_variables() -> Vec<(&'static str, String)> {
    let a = "variables.ann";
    let containers = "variables.containers";
    vec![
        (
            "tann",
            "has(variables.template.metadata) && has(variables.template.metadata.annotations) ? variables.template.metadata.annotations : {}".to_owned(),
        ),
        (
            "tlabels",
            "has(variables.template.metadata) && has(variables.template.metadata.labels) ? variables.template.metadata.labels : {}".to_owned(),
        ),
        ("pod", pod_of("variables.template")),
        ("oldTemplate", template_of("oldObject")),
        ("oldPod", pod_of("variables.oldTemplate")),
        (
            "userInit",
            format!(
                "has(variables.pod.initContainers) ? variables.pod.initContainers.filter(c, !has(c.name) || !(c.name in {})) : []",
                lits(&RESERVED_CONTAINERS)
            ),
        ),
        (
            "userGates",
            format!(
                "has(variables.pod.readinessGates) ? variables.pod.readinessGates.filter(g, !has(g.conditionType) || g.conditionType != {}) : []",
                lit(MIGRATED_CONDITION)
            ),
        ),
        (
            "userVolumes",
            format!(
                "has(variables.pod.volumes) ? variables.pod.volumes.filter(v, !has(v.name) || v.name != {}) : []",
                lit(CODE_VOLUME)
            ),
        ),
        (
            "wasInjected",
            format!(
                "request.operation == 'UPDATE' && oldObject != null && ((has(oldObject.metadata.labels) && {l} in oldObject.metadata.labels && oldObject.metadata.labels[{l}] == 'true') || {i} in variables.tlabels)",
                l = lit(INJECT_LABEL),
                i = lit(INJECTED_LABEL),
            ),
        ),
        (
            "app",
            format!(
                "{c} in {a} ? {containers}.filter(x, has(x.name) && x.name == {a}[{c}])[0] : {d} in variables.tann && {containers}.exists(x, has(x.name) && x.name == variables.tann[{d}]) ? {containers}.filter(x, has(x.name) && x.name == variables.tann[{d}])[0] : {containers}[0]",
                c = lit(CONTAINER),
                d = lit(DEFAULT_CONTAINER_ANNOTATION),
            ),
        ),
        (
            "mode",
            setting(
                MODE,
                &format!(
                    "(variables.jobLike ? {} : {})",
                    lit(Settings::defaults_for(Kind::Job).mode.as_str()),
                    lit(Settings::default().mode.as_str())
                ),
            ),
        ),
        (
            "stepName",
            format!(
                "variables.mode == 'wait' ? {} : {}",
                lit(WAIT_CONTAINER),
                lit(MIGRATE_CONTAINER)
            ),
        ),
        (
            "gate",
            format!(
                "!variables.jobLike && (!({0} in {a}) || {a}[{0}] == 'true')",
                lit(READINESS_GATE_ANNOTATION)
            ),
        ),
    ]
}

/// The value of annotation `k`, or `default`.
fn setting(k: &str, default: &str) -> String {
    format!(
        "{0} in variables.ann ? variables.ann[{0}] : {default}",
        lit(k)
    )
}

/// The injected containers, as CEL (`Object` initializers are only known to the mutation
/// itself, not to variables): `(code copy, Django step)`.
fn containers(image: &CodeImage) -> (String, String) {
    let d = Settings::default();
    let env =
        |name: &str, value: &str| format!("{INIT}.env{{name: {}, value: {value}}}", lit(name));
    let number = |k: &str, default: u32| {
        format!(
            "{0} in variables.ann ? string(int(variables.ann[{0}])) : '{default}'",
            lit(k)
        )
    };
    let names = |k: &str| {
        format!(
            "variables.ann[{}].split(',').map(w, w.trim()).filter(w, w != '').join(',')",
            lit(k)
        )
    };
    let default_hold_back: Vec<&str> = d.hold_back.iter().map(|h| h.as_str()).collect();
    let mut dropped: Vec<&str> = STEP_ENV.to_vec();
    dropped.extend(LEGACY_ENV);
    let step_env = format!(
        "(has(variables.app.env) ? variables.app.env.filter(e, !has(e.name) || !(e.name in {dropped})) : []) + [{mode}, {database}, {command}, {wait}, {migrate}, {lock}, {unsafe_}] + ({allow} in variables.ann ? [{allow_env}] : []) + ({defer} in variables.ann ? [{defer_env}] : []) + ({fast} in variables.ann && variables.ann[{fast}] == 'false' ? [{fast_env}] : []) + ({post} in variables.ann && variables.ann[{post}] == 'false' ? [{post_env}] : []) + ({module} in variables.ann ? [{module_env}] : []) + (variables.holdBack != {default_hold_back} ? [{hold_env}] : []) + ({rows} in variables.ann && uint(variables.ann[{rows}]) != {default_rows}u ? [{rows_env}] : []) + [{release}]",
        dropped = lits(&dropped),
        mode = env(ENV_MODE, "variables.mode"),
        database = env(ENV_DATABASE, &setting(DATABASE, &lit(&d.database))),
        command = env(ENV_MANAGE_COMMAND, "variables.manageCommand"),
        wait = env(ENV_WAIT_TIMEOUT, &number(WAIT_TIMEOUT, d.wait_timeout)),
        migrate = env(
            ENV_MIGRATE_TIMEOUT,
            &number(MIGRATE_TIMEOUT, d.migrate_timeout)
        ),
        lock = env(ENV_LOCK_TIMEOUT, &number(LOCK_TIMEOUT, d.lock_timeout)),
        unsafe_ = env(
            ENV_UNSAFE_MIGRATIONS,
            &setting(UNSAFE_MIGRATIONS, &lit(d.unsafe_migrations.as_str()))
        ),
        allow = lit(ALLOW_UNSAFE),
        allow_env = env(ENV_ALLOW_UNSAFE, &names(ALLOW_UNSAFE)),
        defer = lit(DEFER),
        defer_env = env(ENV_DEFER, &names(DEFER)),
        fast = lit(FAST_PATH),
        fast_env = env(ENV_FAST_PATH, "'false'"),
        post = lit(POST_MIGRATE),
        post_env = env(ENV_POST_MIGRATE, "'false'"),
        module = lit(SETTINGS_MODULE),
        module_env = env(
            ENV_SETTINGS_MODULE,
            &format!("variables.ann[{}]", lit(SETTINGS_MODULE))
        ),
        release = cel(
            &format!("{INIT}.env"),
            &injected::release_env(Kind::Deployment)
        )
        .replace(
            &lit(&release_field(Kind::Deployment)),
            "variables.releaseField"
        ),
        default_hold_back = lit(&default_hold_back.join(",")),
        hold_env = env(ENV_HOLD_BACK, "variables.holdBack"),
        rows = lit(LOCKING_MIN_ROWS),
        default_rows = d.locking_min_rows,
        rows_env = env(
            ENV_LOCKING_MIN_ROWS,
            &format!("string(uint(variables.ann[{}]))", lit(LOCKING_MIN_ROWS))
        ),
    );
    let run = format!(
        "[string(variables.python), {}]",
        lit(&format!("{CODE_MOUNT_PATH}/{PROGRAM_FILE}"))
    );
    let copied: String = [
        "image",
        "imagePullPolicy",
        "envFrom",
        "workingDir",
        "securityContext",
        "resources",
    ]
    .iter()
    .fold(String::new(), |mut out, f| {
        let _ = write!(out, "?{f}: variables.app.?{f}, ");
        out
    });
    let step = format!(
        "{INIT}{{name: variables.stepName, {copied}?command: variables.entrypoint ? optional.none() : optional.of({run}), ?args: variables.entrypoint ? optional.of({run}) : optional.none(), env: variables.stepEnv, volumeMounts: (has(variables.app.volumeMounts) ? variables.app.volumeMounts : []) + [{mount}], terminationMessagePath: {log}, terminationMessagePolicy: 'FallbackToLogsOnError'}}",
        mount = cel(
            &format!("{INIT}.volumeMounts"),
            &json!({"name": CODE_VOLUME, "mountPath": CODE_MOUNT_PATH, "readOnly": true})
        ),
        log = lit(TERMINATION_LOG),
    );
    let root: crate::workload::JsonMap =
        serde_json::from_value(json!({"runAsUser": 0})).unwrap_or_default();
    let code = format!(
        "has(variables.pod.securityContext) && has(variables.pod.securityContext.runAsUser) && variables.pod.securityContext.runAsUser == 0 ? {} : {}",
        cel(INIT, &injected::code_container(image, Some(&root))),
        cel(INIT, &injected::code_container(image, None)),
    );
    let step = step.replace("variables.stepEnv", &format!("({step_env})"));
    (code, step)
}

/// The downward API field of a step's release in a pod of `kind`.
fn release_field(kind: Kind) -> String {
    injected::release_env(kind)["valueFrom"]["fieldRef"]["fieldPath"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The settings the injected step reads; `delivery` is the chart's `codeDelivery` (or its
/// placeholder).
fn injection_variables(delivery: &str) -> Vec<(&'static str, String)> {
    let d = Settings::default();
    let default_hold_back: Vec<&str> = d.hold_back.iter().map(|h| h.as_str()).collect();
    let hold_back_words = format!(
        "({} in variables.ann ? variables.ann[{}].split(',').map(w, w.trim()) : {})",
        lit(HOLD_BACK),
        lit(HOLD_BACK),
        lits(&default_hold_back)
    );
    let mut release = lit(&release_field(Kind::Deployment));
    for kind in Kind::ALL.into_iter().rev() {
        if release_field(kind) != release_field(Kind::Deployment) {
            release = format!(
                "variables.kind == {} ? {} : {release}",
                lit(kind.as_str()),
                lit(&release_field(kind))
            );
        }
    }
    vec![
        ("releaseField", release),
        ("imageVolume", format!("{} == 'imageVolume'", lit(delivery))),
        ("python", setting(PYTHON, &lit(&d.python))),
        ("managePy", setting(MANAGE_PY, &lit(&d.manage_py))),
        (
            "manageCommand",
            format!(
                "{0} in variables.ann ? variables.ann[{0}].findAll('[A-Za-z0-9._/+-]+').join(' ') : variables.python + ' ' + variables.managePy",
                lit(MANAGE_COMMAND)
            ),
        ),
        (
            "holdBack",
            format!(
                "((('breaking' in {hold_back_words}) ? ['breaking'] : []) + (('locking' in {hold_back_words}) ? ['locking'] : [])).join(',')"
            ),
        ),
        (
            "entrypoint",
            format!(
                "{0} in variables.ann && variables.ann[{0}] == 'true'",
                lit(USE_IMAGE_ENTRYPOINT)
            ),
        ),
    ]
}

/// The JSON Patch: the injection for an opted-in workload with valid settings, the
/// removal for one that opted out, nothing otherwise (nor for what the webhook leaves
/// alone). Paths are under the kind's pod template, `variables.tpath`.
fn patch_expression(image: &CodeImage) -> String {
    let (code, step) = containers(image);
    let path = |suffix: &str| format!("variables.tpath + {}", lit(suffix));
    let add =
        |path: &str, value: &str| format!("JSONPatch{{op: 'add', path: {path}, value: {value}}}");
    let remove = |path: &str| format!("JSONPatch{{op: 'remove', path: {path}}}");
    let init = path("/spec/initContainers");
    let gates = path("/spec/readinessGates");
    let volumes = path("/spec/volumes");
    let labels = path("/metadata/labels");
    let injected_label = path(&format!("/metadata/labels/{}", pointer(INJECTED_LABEL)));
    let volume_of = |delivery| {
        cel(
            "Object.spec.template.spec.volumes",
            &injected::code_volume(&CodeImage {
                delivery,
                ..image.clone()
            }),
        )
    };
    let volume = format!(
        "variables.imageVolume ? {} : {}",
        volume_of(CodeDelivery::ImageVolume),
        volume_of(CodeDelivery::Copy)
    );
    let gate = format!(
        "Object.spec.template.spec.readinessGates{{conditionType: {}}}",
        lit(MIGRATED_CONDITION)
    );
    // Keep (or drop) a list: `add` replaces a field that exists.
    let keep = |path: &str, list: &str, field: &str| {
        format!(
            "({list}.size() > 0 ? [{}] : has(variables.pod.{field}) ? [{}] : [])",
            add(path, list),
            remove(path)
        )
    };
    let record = lit(CONTRACTED_RELEASES);
    let lists = [
        add(
            &init,
            &format!("variables.userInit + (variables.imageVolume ? [] : [{code}]) + [{step}]"),
        ),
        add(&volumes, &format!("variables.userVolumes + [{volume}]")),
        add(&gates, &format!("variables.userGates + [{gate}]")),
        keep(&gates, "variables.userGates", "readinessGates"),
    ];
    // A CronJob's template also names the CronJob, for its Jobs' pods.
    let name = "string(has(object.metadata.name) ? object.metadata.name : '')";
    let cronjob_label = path(&format!("/metadata/labels/{}", pointer(CRONJOB_LABEL)));
    let injected = format!(
        "(variables.kind == 'CronJob' ? {{{i}: 'true', {c}: {name}}} : {{{i}: 'true'}})",
        i = lit(INJECTED_LABEL),
        c = lit(CRONJOB_LABEL),
    );
    // A CronJob's pod template may have no metadata at all.
    let label = format!(
        "has(variables.template.metadata) ? (has(variables.template.metadata.labels) ? [{}] + (variables.kind == 'CronJob' ? [{}] : []) : [{}]) : [{}]",
        add(&injected_label, "'true'"),
        add(&cronjob_label, name),
        add(&labels, &injected),
        add(&path("/metadata"), &format!("{{'labels': {injected}}}")),
    );
    // `kubectl rollout undo` replaces the annotations: keep the controller's record.
    let kept = [
        add(
            &lit(&format!(
                "/metadata/annotations/{}",
                pointer(CONTRACTED_RELEASES)
            )),
            &format!("oldObject.metadata.annotations[{record}]"),
        ),
        add(
            &lit("/metadata/annotations"),
            &format!("{{{record}: oldObject.metadata.annotations[{record}]}}"),
        ),
    ];
    let restore = format!(
        "oldObject != null && !({record} in variables.ann) && has(oldObject.metadata.annotations) && {record} in oldObject.metadata.annotations ? (has(object.metadata.annotations) ? [{}] : [{}]) : []",
        kept[0], kept[1]
    );
    let inject = format!(
        "[{}, {}] + (variables.gate ? [{}] : {}) + ({label}) + ({restore})",
        lists[0], lists[1], lists[2], lists[3]
    );
    let strip = format!(
        "{} + {} + {} + ({} in variables.tlabels ? [{}] : []) + ({} in variables.tlabels ? [{}] : [])",
        keep(&init, "variables.userInit", "initContainers"),
        keep(&gates, "variables.userGates", "readinessGates"),
        keep(&volumes, "variables.userVolumes", "volumes"),
        lit(INJECTED_LABEL),
        remove(&injected_label),
        lit(CRONJOB_LABEL),
        remove(&cronjob_label),
    );
    format!(
        "variables.skip ? [] : !variables.optedIn ? (variables.wasInjected ? {strip} : []) : variables.denial != '' ? [] : {inject}"
    )
}

// ---------------------------------------------------------------- validations

fn settings_validations() -> Vec<Value> {
    vec![json!({
        "expression": "!variables.optedIn || variables.skip || variables.denial == ''",
        "messageExpression": "variables.denial",
        "reason": "Invalid",
    })]
}

/// One validation per warning the webhook gives (a failed `Warn` validation is a
/// warning). They read the object after the mutation, and the stored object.
/// A `Warn` validation: `message` when `when` holds, cut as the webhook cuts warnings.
fn warn(when: &str, message: &str) -> Value {
    json!({
        "expression": format!("!({when})"),
        "messageExpression": cut(&format!("({message})"), MAX_WARNING_LEN),
    })
}

fn warning_validations() -> Vec<Value> {
    let ok = "!variables.skip && variables.optedIn && variables.denial == ''";
    let differs = |field: &str| {
        format!(
            "(has(variables.pod.{field}) ? variables.pod.{field} : []) != (has(variables.oldPod.{field}) ? variables.oldPod.{field} : [])"
        )
    };
    let old_reserved = format!(
        "has(variables.oldPod.initContainers) && variables.oldPod.initContainers.exists(c, has(c.name) && c.name in {})",
        lits(&RESERVED_CONTAINERS)
    );
    let changed = format!(
        "(oldObject == null || {} || {} || {} || ({i} in variables.tlabels) != (has(variables.oldTemplate.metadata) && has(variables.oldTemplate.metadata.labels) && {i} in variables.oldTemplate.metadata.labels))",
        differs("initContainers"),
        differs("readinessGates"),
        differs("volumes"),
        i = lit(INJECTED_LABEL),
    );
    let app_name = "(has(variables.app.name) ? variables.app.name : '<unnamed>')";
    // The delivery as stored: the mutation wrote the code volume one way or the other.
    let image_volume = format!(
        "(has(variables.pod.volumes) && variables.pod.volumes.exists(v, has(v.name) && v.name == {} && has(v.image)))",
        lit(CODE_VOLUME)
    );
    let mut v = vec![
        warn(
            &format!("{ok} && {changed}"),
            &format!(
                "'django-migrate: ' + (oldObject != null && {old_reserved} ? 'updated' : 'injected') + ({image_volume} ? ' init container ' + variables.stepName + ' (copied from ' + {app} + ') and image volume {CODE_VOLUME}' : ' init containers {CODE_CONTAINER} and ' + variables.stepName + ' (copied from ' + {app} + ')')",
                app = quoted(app_name),
            ),
        ),
        warn(
            &format!("{ok} && {changed}"),
            &format!(
                "variables.gate ? {} : {}",
                lit(&format!(
                    "django-migrate: readiness gate {MIGRATED_CONDITION}: a pod is Ready once its migration step succeeded"
                )),
                per_kind(&Kind::ALL, mutation::no_gate_warning),
            ),
        ),
    ];
    // Which container the step copies, as `choose_app_container` warns about it.
    let c = lit(CONTAINER);
    let d = lit(DEFAULT_CONTAINER_ANNOTATION);
    let n = "variables.containers.size()";
    let default_named =
        format!("variables.containers.exists(x, has(x.name) && x.name == variables.tann[{d}])");
    v.push(warn(
        &format!("{ok} && !({c} in variables.ann) && {d} in variables.tann && {default_named} && {n} > 1"),
        &format!(
            "'django-migrate: ' + string({n}) + ' containers, using ' + {} + ' from {DEFAULT_CONTAINER_ANNOTATION}'",
            quoted(&format!("variables.tann[{d}]"))
        ),
    ));
    v.push(warn(
        &format!("{ok} && !({c} in variables.ann) && {d} in variables.tann && !{default_named}"),
        &format!(
            "'django-migrate: {DEFAULT_CONTAINER_ANNOTATION} names no container (' + {} + '); using the first'",
            quoted(&format!("variables.tann[{d}]"))
        ),
    ));
    v.push(warn(
        &format!("{ok} && !({c} in variables.ann) && !({d} in variables.tann) && {n} > 1"),
        &format!(
            "'django-migrate: ' + string({n}) + ' containers, using the first, ' + {} + '; set {CONTAINER} to choose'",
            quoted("(has(variables.containers[0].name) ? variables.containers[0].name : '')")
        ),
    ));
    v.extend(problem_validations(ok));
    v
}

/// `f(kind)` for the request's kind (one of `kinds`; the last one otherwise), as CEL.
fn per_kind(kinds: &[Kind], f: impl Fn(Kind) -> String) -> String {
    let Some((last, rest)) = kinds.split_last() else {
        return "''".to_owned();
    };
    let mut out = String::from("(");
    for kind in rest {
        let _ = write!(
            out,
            "variables.kind == {} ? {} : ",
            lit(kind.as_str()),
            lit(&f(*kind))
        );
    }
    let _ = write!(out, "{})", lit(&f(*last)));
    out
}

/// Warnings about the app's own init containers, SQLite, deferring without a contract
/// phase, an opt-out, and what the webhook leaves alone.
fn problem_validations(ok: &str) -> Vec<Value> {
    let mut v = Vec::new();
    // An init container of the app's own that runs migrate: one warning each.
    for i in 0..MIGRATE_INIT_WARNINGS {
        let c = format!("variables.userInit[{i}]");
        let words = format!(
            "((has({c}.command) ? {c}.command : []) + (has({c}.args) ? {c}.args : [])).join(' ')"
        );
        v.push(warn(
            &format!("{ok} && variables.userInit.size() > {i} && {words}.contains('migrate')"),
            &format!(
                "'django-migrate: init container ' + {} + ({words}.contains('--check') ? ' polls migrate --check; django-migrate makes it redundant' : ' already runs migrations; remove it so only the locked migrate runs')",
                quoted(&format!("(has({c}.name) ? {c}.name : '<unnamed>')"))
            ),
        ));
    }
    v.push(warn(
        &format!(
            "{ok} && has(object.spec.replicas) && object.spec.replicas > 1 && has(variables.app.env) && variables.app.env.exists(e, has(e.name) && e.name == 'DATABASE_URL' && has(e.value) && e.value.startsWith('sqlite'))"
        ),
        "'django-migrate: DATABASE_URL is SQLite with ' + string(object.spec.replicas) + ' replicas: no shared database, no cross-pod lock'",
    ));
    let job_like: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| k.runs_to_completion())
        .collect();
    v.push(warn(
        &format!(
            "{ok} && variables.jobLike && ({} in variables.ann || ({u} in variables.ann && variables.ann[{u}] == 'defer'))",
            lit(DEFER),
            u = lit(UNSAFE_MIGRATIONS),
        ),
        &per_kind(&job_like, mutation::no_contract_warning),
    ));
    v.push(warn(
        &format!(
            "variables.kind == 'Job' && variables.skip && request.operation == 'UPDATE' && !(has(object.metadata.ownerReferences) && object.metadata.ownerReferences.exists(o, has(o.kind) && o.kind == 'CronJob' && has(o.controller) && o.controller)) && !variables.optedIn && has(oldObject.metadata.labels) && {l} in oldObject.metadata.labels && oldObject.metadata.labels[{l}] == 'true' && {}",
            injected_parts("variables.template"),
            l = lit(INJECT_LABEL),
        ),
        &lit(&mutation::job_keeps_injection(Kind::Job)),
    ));
    v.push(warn(
        "variables.kind == 'Rollout' && variables.skip && variables.optedIn && has(object.spec.workloadRef)",
        &format!(
            "'django-migrate: this Rollout takes its pod template from ' + (has(object.spec.workloadRef.kind) ? object.spec.workloadRef.kind : 'Deployment') + ' ' + {} + ' (workloadRef): not injected'",
            quoted("(has(object.spec.workloadRef.name) ? object.spec.workloadRef.name : '')")
        ),
    ));
    v.push(warn(
        &format!(
            "!variables.skip && !variables.optedIn && variables.wasInjected && {old_has} && !{new_has}",
            old_has = injected_parts("variables.oldTemplate"),
            new_has = injected_parts("variables.template"),
        ),
        &lit(&format!(
            "django-migrate: label {INJECT_LABEL} removed: removed the injected init containers, volume and readiness gate"
        )),
    ));
    v
}

/// How many of an app's own init containers are checked for `migrate` (the webhook
/// checks all of them; a validation gives one warning).
pub const MIGRATE_INIT_WARNINGS: usize = 8;

/// Whether pod template `t` carries any part of the injection.
fn injected_parts(t: &str) -> String {
    format!(
        "((has({t}.spec) && has({t}.spec.initContainers) && {t}.spec.initContainers.exists(c, has(c.name) && c.name in {reserved})) || (has({t}.spec) && has({t}.spec.readinessGates) && {t}.spec.readinessGates.exists(g, has(g.conditionType) && g.conditionType == {gate})) || (has({t}.spec) && has({t}.spec.volumes) && {t}.spec.volumes.exists(v, has(v.name) && v.name == {volume})) || (has({t}.metadata) && has({t}.metadata.labels) && {label} in {t}.metadata.labels))",
        reserved = lits(&RESERVED_CONTAINERS),
        gate = lit(MIGRATED_CONDITION),
        volume = lit(CODE_VOLUME),
        label = lit(INJECTED_LABEL),
    )
}

/// The chart's `files/policies.yaml`: the three policies as JSON documents, with
/// placeholders that `templates/policy.yaml` fills in (`__NAME__`, `__CODE_IMAGE__`,
/// `__PULL_POLICY__`, `__CODE_DELIVERY__`, `__FAILURE_POLICY__`).
pub fn chart_file() -> String {
    let o = PolicyOptions {
        name: "__NAME__".to_owned(),
        image: CodeImage {
            image: "__CODE_IMAGE__".to_owned(),
            pull_policy: "__PULL_POLICY__".to_owned(),
            delivery: CodeDelivery::Copy,
        },
        exclude_namespaces: Vec::new(),
        failure_policy: "__FAILURE_POLICY__".to_owned(),
        delivery_placeholder: Some("__CODE_DELIVERY__"),
    };
    let mut out = String::from(
        "# Generated by `django-migrate-webhook` (src/policy.rs); `UPDATE_GOLDEN=1 cargo test --lib policy` rewrites it.\n",
    );
    for p in policies(&o) {
        out.push_str("---\n");
        out.push_str(&p.to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_carries_the_policies_this_version_generates() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/charts/django-migrate-webhook/files/policies.yaml"
        );
        let generated = chart_file();
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let stored = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            stored == generated,
            "{path} is not what this version generates: run UPDATE_GOLDEN=1 cargo test --lib policy"
        );
    }

    #[test]
    fn cel_literals_escape_quotes_and_backslashes() {
        assert_eq!(lit(r"it's a \ path"), r"'it\'s a \\ path'");
        assert_eq!(pointer("django-migrate.io/x~y"), "django-migrate.io~1x~0y");
        assert_eq!(
            cel("Object.a", &json!({"b": {"c": [1, "d"]}, "e": true})),
            "Object.a{b: Object.a.b{c: [1, 'd']}, e: true}"
        );
    }

    #[test]
    fn every_setting_has_an_allowed_text_and_a_validity_test() {
        for a in KNOWN_ANNOTATIONS {
            if a == CONTRACTED_RELEASES {
                continue;
            }
            assert!(settings::allowed(a).is_some(), "{a}");
            assert!(valid("k", "v").contains(&lit(a)), "{a}");
        }
    }

    #[test]
    fn bindings_select_the_opt_in_label_outside_excluded_namespaces() {
        let objects = objects(&PolicyOptions::default());
        let kinds: Vec<&str> = objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                "MutatingAdmissionPolicy",
                "MutatingAdmissionPolicyBinding",
                "ValidatingAdmissionPolicy",
                "ValidatingAdmissionPolicyBinding",
                "ValidatingAdmissionPolicy",
                "ValidatingAdmissionPolicyBinding"
            ]
        );
        let binding = &objects[1]["spec"]["matchResources"];
        assert_eq!(
            binding["objectSelector"]["matchLabels"][INJECT_LABEL],
            "true"
        );
        assert_eq!(
            binding["namespaceSelector"]["matchExpressions"][0]["values"],
            json!(["kube-system"])
        );
        assert_eq!(objects[3]["spec"]["validationActions"], json!(["Deny"]));
        assert_eq!(objects[5]["spec"]["validationActions"], json!(["Warn"]));
    }
}
