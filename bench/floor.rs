//! The floor of the benchmarks: the least work any correct webhook must do per request.
//!
//! It parses the body into a `serde_json::Value`, reads `request.uid` and answers with a
//! response prepared before the benchmark started, holding the same base64 patch and
//! warnings that the webhook returns for that input. So the floor and the webhook put the
//! same bytes on the wire; the floor only skips deciding what they are.

use serde::Serialize;
use serde_json::Value;

/// A prepared answer: everything of the AdmissionResponse except the uid.
pub struct Prepared {
    pub patch: Option<String>,
    pub warnings: Vec<String>,
}

impl Prepared {
    /// Takes the patch and warnings out of a response the webhook gave for the input.
    pub fn from_response(body: &[u8]) -> Prepared {
        let v: Value = serde_json::from_slice(body).expect("the webhook's response is JSON");
        let response = &v["response"];
        Prepared {
            patch: response["patch"].as_str().map(str::to_owned),
            warnings: response["warnings"]
                .as_array()
                .map(|w| {
                    w.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Review<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: Response<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
}

/// Answers one request body: `Err` with a message when it is not JSON or has no uid.
pub fn answer(body: &[u8], prepared: &Prepared) -> Result<Vec<u8>, String> {
    answer_by_operation(body, prepared, prepared)
}

/// Answers with `create` or `update` by `request.operation`, from one parse of the body:
/// the floor registered with a real API server, which sends both to one URL.
pub fn answer_by_operation(
    body: &[u8],
    create: &Prepared,
    update: &Prepared,
) -> Result<Vec<u8>, String> {
    let review: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let request = review.get("request");
    let uid = request
        .and_then(|r| r.get("uid"))
        .and_then(Value::as_str)
        .ok_or("request.uid is missing")?;
    let prepared = match request
        .and_then(|r| r.get("operation"))
        .and_then(Value::as_str)
    {
        Some("UPDATE") => update,
        _ => create,
    };
    serde_json::to_vec(&Review {
        api_version: "admission.k8s.io/v1",
        kind: "AdmissionReview",
        response: Response {
            uid,
            allowed: true,
            patch_type: prepared.patch.as_ref().map(|_| "JSONPatch"),
            patch: prepared.patch.as_deref(),
            warnings: &prepared.warnings,
        },
    })
    .map_err(|e| e.to_string())
}
