//! AdmissionReview `admission.k8s.io/v1` in and out: decode, call the engine, encode.
//!
//! The request is parsed into small borrowed structs; the object itself is kept as raw
//! JSON until the kind says it is an apps/v1 Deployment, and only then parsed into the
//! engine's view. Allowed and denied answers are one serde type; its `patch` is written
//! as a base64 string, which is what the API server reads (kube-core's types put bytes
//! on the wire as an array of numbers).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::injected::CodeImage;
use crate::mutation::{self, Denial, Operation};
use crate::workload::{Kind, Workload};

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn<'a> {
    #[serde(borrow)]
    api_version: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    request: Option<RequestIn<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn<'a> {
    #[serde(borrow)]
    uid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kind: Option<GroupVersionKind<'a>>,
    #[serde(borrow)]
    operation: Option<Cow<'a, str>>,
    #[serde(borrow)]
    object: Option<&'a RawValue>,
    #[serde(borrow)]
    old_object: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct GroupVersionKind<'a> {
    #[serde(borrow, default)]
    group: Cow<'a, str>,
    #[serde(borrow, default)]
    version: Cow<'a, str>,
    #[serde(borrow, default)]
    kind: Cow<'a, str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<Base64<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status<'a>>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
}

/// Bytes the API server reads as standard base64 in a JSON string (`patch`).
struct Base64<'a>(&'a [u8]);

impl Serialize for Base64<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(self.0))
    }
}

/// A `meta/v1` Status, used for denials and for HTTP error bodies.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Status<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_version: Option<&'static str>,
    status: &'static str,
    message: &'a str,
    reason: &'static str,
    code: u16,
}

/// How one request ended; used for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Allowed with a non-empty patch.
    Patched,
    /// An opted-in (or opted-out) Deployment that needed no change.
    Unchanged,
    /// Not a Deployment CREATE/UPDATE, or not opted in: allowed without looking further.
    Skipped,
    /// Denied because of the Deployment's settings.
    Denied,
    /// The HTTP request was not a usable AdmissionReview (4xx).
    Invalid,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Patched,
        Outcome::Unchanged,
        Outcome::Skipped,
        Outcome::Denied,
        Outcome::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Patched => "patched",
            Outcome::Unchanged => "unchanged",
            Outcome::Skipped => "skipped",
            Outcome::Denied => "denied",
            Outcome::Invalid => "invalid",
        }
    }
}

/// The HTTP answer to one POST /mutate.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    pub outcome: Outcome,
    /// The denial or error message, for the log line.
    pub message: Option<String>,
    pub uid: Option<String>,
}

/// Answers one AdmissionReview body. Never panics, whatever the input. `image` is the
/// webhook's own image, which the injected code-copy container runs.
pub fn review(body: &[u8], image: &CodeImage) -> Reply {
    let input: ReviewIn = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return invalid(
                400,
                format!(
                    "request body is not a valid AdmissionReview JSON document: {}",
                    with_path::<ReviewIn>(body, &e)
                ),
            );
        }
    };
    let (api_version, kind) = (
        input.api_version.as_deref().unwrap_or(""),
        input.kind.as_deref().unwrap_or(""),
    );
    if api_version != API_VERSION || kind != KIND {
        return invalid(
            400,
            format!(
                "expected apiVersion {API_VERSION:?} and kind {KIND:?}, got apiVersion {api_version:?} and kind {kind:?}; \
                 set admissionReviewVersions: [v1] in the webhook configuration"
            ),
        );
    }
    let Some(request) = input.request else {
        return invalid(400, "AdmissionReview has no request".into());
    };
    let uid = match request.uid.as_deref() {
        Some(uid) if !uid.is_empty() => uid,
        _ => {
            return invalid(
                400,
                "AdmissionReview request.uid is missing or empty".into(),
            );
        }
    };
    let kind = request
        .kind
        .as_ref()
        .and_then(|k| Kind::from_gvk(&k.group, &k.version, &k.kind));
    let op = match request.operation.as_deref() {
        Some("CREATE") => Some(Operation::Create),
        Some("UPDATE") => Some(Operation::Update),
        _ => None,
    };
    let (Some(op), Some(kind)) = (op, kind) else {
        return allowed(uid, Outcome::Skipped, None, &[]);
    };
    let Some(object) = request.object else {
        return invalid(400, "AdmissionReview request.object is missing".into());
    };
    let new = match Workload::parse(kind, object.get()) {
        Ok(w) => w,
        Err(e) => {
            return invalid(
                400,
                format!(
                    "request.object is not a valid {} {kind}: {}",
                    kind.api_version(),
                    with_path::<Workload>(object.get().as_bytes(), &e)
                ),
            );
        }
    };
    let old = match request.old_object {
        Some(raw) if op == Operation::Update => match Workload::parse(kind, raw.get()) {
            Ok(w) => Some(w),
            Err(e) => {
                return invalid(
                    400,
                    format!(
                        "request.oldObject is not a valid {} {kind}: {}",
                        kind.api_version(),
                        with_path::<Workload>(raw.get().as_bytes(), &e)
                    ),
                );
            }
        },
        _ => None,
    };
    match mutation::mutate(op, &new, old.as_ref(), image) {
        Ok(m) if m.is_empty() => {
            let outcome = if new.is_opted_in() {
                Outcome::Unchanged
            } else {
                Outcome::Skipped
            };
            allowed(uid, outcome, None, &m.warnings)
        }
        Ok(m) => match serde_json::to_vec(&m.patch) {
            Ok(json) => allowed(uid, Outcome::Patched, Some(&json), &m.warnings),
            Err(e) => invalid(500, format!("cannot encode the patch: {e}")),
        },
        Err(denial) => denied(uid, &denial),
    }
}

/// The parse error again, with the path of the field it is about (`spec.replicas: ...`).
/// Only failed requests pay for the second, path-tracking parse.
fn with_path<'de, T: Deserialize<'de>>(json: &'de [u8], error: &serde_json::Error) -> String {
    let mut de = serde_json::Deserializer::from_slice(json);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Err(e) if e.path().iter().next().is_some() => {
            // Deep nesting makes a long path; its start says where the problem is.
            let mut path = e.path().to_string();
            crate::text::cut(&mut path, 160);
            format!("{path}: {}", e.inner())
        }
        _ => error.to_string(),
    }
}

fn encode(review: &ReviewOut) -> Vec<u8> {
    // Serialising plain strings, bools and bytes into a Vec cannot fail.
    serde_json::to_vec(review).unwrap_or_default()
}

fn allowed(uid: &str, outcome: Outcome, patch: Option<&[u8]>, warnings: &[String]) -> Reply {
    let body = encode(&ReviewOut {
        api_version: API_VERSION,
        kind: KIND,
        response: ResponseOut {
            uid,
            allowed: true,
            patch_type: patch.map(|_| "JSONPatch"),
            patch: patch.map(Base64),
            status: None,
            warnings,
        },
    });
    Reply {
        status: 200,
        body,
        outcome,
        message: None,
        uid: Some(uid.to_owned()),
    }
}

fn denied(uid: &str, denial: &Denial) -> Reply {
    let message = denial.to_string();
    let body = encode(&ReviewOut {
        api_version: API_VERSION,
        kind: KIND,
        response: ResponseOut {
            uid,
            allowed: false,
            patch_type: None,
            patch: None,
            status: Some(Status {
                kind: None,
                api_version: None,
                status: "Failure",
                message: &message,
                reason: "BadRequest",
                code: 400,
            }),
            warnings: &[],
        },
    });
    Reply {
        status: 200,
        body,
        outcome: Outcome::Denied,
        message: Some(message),
        uid: Some(uid.to_owned()),
    }
}

/// A JSON `Status` body for a request that is not a usable AdmissionReview.
pub fn invalid(code: u16, message: String) -> Reply {
    Reply {
        status: code,
        body: error_body(code, &message),
        outcome: Outcome::Invalid,
        message: Some(message),
        uid: None,
    }
}

/// The JSON body of an HTTP error, shaped like the API server's own `Status` errors.
pub fn error_body(code: u16, message: &str) -> Vec<u8> {
    let reason = match code {
        400 => "BadRequest",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        _ => "InternalError",
    };
    serde_json::to_vec(&Status {
        kind: Some("Status"),
        api_version: Some("v1"),
        status: "Failure",
        message,
        reason,
        code,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn body(reply: &Reply) -> Value {
        serde_json::from_slice(&reply.body).unwrap()
    }

    #[test]
    fn garbage_gets_a_400_with_a_status_body() {
        for input in [
            &b""[..],
            b"{",
            b"[]",
            b"\xff\xfe",
            b"{\"apiVersion\":\"admission.k8s.io/v1beta1\",\"kind\":\"AdmissionReview\"}",
            b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\"}",
            b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{\"uid\":\"\"}}",
            b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{\"uid\":5}}",
        ] {
            let r = review(input, &CodeImage::default());
            assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(input));
            let b = body(&r);
            assert_eq!(b["kind"], "Status");
            assert_eq!(b["code"], 400);
            assert!(!b["message"].as_str().unwrap().is_empty());
        }
    }

    #[test]
    fn other_kinds_and_operations_are_allowed_without_patch() {
        let r = review(
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1",
            "kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","object":{}}}"#,
            &CodeImage::default(),
        );
        assert_eq!(r.status, 200);
        let b = body(&r);
        assert_eq!(b["response"]["uid"], "u1");
        assert_eq!(b["response"]["allowed"], true);
        assert!(b["response"].get("patch").is_none());
    }
}
