//! Golden fixtures: `tests/fixtures/admission/NAME.request.json` goes through the same
//! function the server uses; the answer, the decoded patch and the patched object must
//! equal `NAME.expected.json`. Set `UPDATE_GOLDEN=1` to rewrite the expected files after
//! an intended change, then review the diff.

use std::fs;
use std::path::{Path, PathBuf};

use django_migrate_webhook::preview::{self, OutputFormat};
use serde_json::{Value, json};

use crate::support::*;

fn fixtures() -> Vec<PathBuf> {
    let dir = repo().join("tests/fixtures/admission");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".request.json"))
        .collect();
    files.sort();
    files
}

/// Runs one fixture and checks the invariants every answer must keep.
fn run(path: &Path) -> Value {
    let input = with_code(read_json(path));
    let request = &input["request"];
    let (status, body) = respond(&input);
    if status != 200 {
        return json!({ "httpStatus": status, "body": body });
    }
    let mut response = body["response"].clone();
    assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(body["kind"], "AdmissionReview");
    assert_eq!(response["uid"], request["uid"], "the uid must be echoed");
    for w in warnings(&response) {
        assert!(w.chars().count() <= 120, "warning too long: {w}");
    }
    let patch = patch_of(&response);
    let mut out = json!({ "httpStatus": status });
    if let Some(patch) = &patch {
        let mutated = apply(&request["object"], patch);
        assert_valid_workload(&mutated);
        assert_eq!(
            without_owned(&mutated),
            without_owned(&request["object"]),
            "the patch changed something the webhook does not own"
        );
        // Idempotent: the webhook's own output, sent back as an UPDATE, needs no patch.
        let (_, again) = respond(&review("UPDATE", &mutated, Some(&request["object"])));
        assert!(
            patch_of(&again["response"]).is_none(),
            "second pass is not empty: {again}"
        );
        out["patch"] = patch.clone();
        out["mutated"] = mutated;
        let map = response.as_object_mut().unwrap();
        map.remove("patch");
    }
    out["response"] = response;
    out
}

#[test]
fn admission_fixtures_match_their_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let files = fixtures();
    assert!(files.len() >= 30, "fixtures are missing: {}", files.len());
    let mut mismatches = Vec::new();
    for path in &files {
        let actual = without_code(run(path));
        let expected_path = PathBuf::from(
            path.to_string_lossy()
                .replace(".request.json", ".expected.json"),
        );
        let text = serde_json::to_string_pretty(&actual).unwrap() + "\n";
        if update {
            fs::write(&expected_path, &text).unwrap();
            continue;
        }
        match fs::read_to_string(&expected_path) {
            Ok(expected) if expected == text => {}
            Ok(_) => mismatches.push(format!(
                "{} differs from {}:\n{text}",
                path.display(),
                expected_path.display()
            )),
            Err(_) => mismatches.push(format!(
                "{} is missing (UPDATE_GOLDEN=1 writes it):\n{text}",
                expected_path.display()
            )),
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n\n"));
}

/// `inject` and `serve` run the same engine: the preview of every CREATE fixture gives
/// the object the webhook's patch gives, or fails with the webhook's denial message.
#[test]
fn inject_preview_agrees_with_the_webhook() {
    let mut compared = 0;
    for path in fixtures() {
        let input = with_code(read_json(&path));
        let request = &input["request"];
        let deployment = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
        if request["operation"] != "CREATE" || request["kind"] != deployment {
            continue;
        }
        let (status, body) = respond(&input);
        assert_eq!(status, 200);
        let response = &body["response"];
        let object = &request["object"];
        let preview = preview::inject(&object.to_string(), OutputFormat::Json, &Default::default());
        if response["allowed"] == true {
            let preview = preview.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let expected = match patch_of(response) {
                Some(p) => apply(object, &p),
                None => object.clone(),
            };
            let previewed: Value = serde_json::from_str(&preview.output).unwrap();
            assert_eq!(previewed, expected, "{}", path.display());
            assert_eq!(preview.warnings, warnings(response), "{}", path.display());
        } else {
            let err = preview.expect_err("the preview must fail where the webhook denies");
            let message = response["status"]["message"].as_str().unwrap();
            assert!(
                err.to_string().ends_with(message),
                "{}: preview said {err}, webhook said {message}",
                path.display()
            );
        }
        compared += 1;
    }
    assert!(compared >= 20, "only {compared} fixtures compared");
}

/// The injection adds a few KB that point at an image, not the program: on the example, at most [`FOOTPRINT_BUDGET`] bytes beyond one copy of the app container's
/// env, envFrom, volumeMounts, resources and securityContext.
#[test]
fn the_example_stays_within_the_footprint_budget() {
    let path = repo().join("examples/django-deployment.yaml");
    let text = fs::read_to_string(&path).unwrap();
    let original: Value = serde_yaml_ng::from_str(&text).unwrap();
    let (mutated, _) = admit(&original);
    let app = &original["spec"]["template"]["spec"]["containers"][0];
    let (added, beyond) = footprint(&original, &mutated, app);
    let before = serde_json::to_vec(&original["spec"]["template"])
        .unwrap()
        .len();
    eprintln!(
        "examples/django-deployment.yaml: pod template {before} -> {} bytes; {added} added, {beyond} beyond the copied fields (budget {FOOTPRINT_BUDGET})",
        before + added
    );
    assert!(
        beyond <= FOOTPRINT_BUDGET,
        "{beyond} bytes beyond the copied fields"
    );
}

/// The example Deployment: `inject` output contains what the book's introduction promises, and
/// `inject` on its own output changes nothing.
#[test]
fn example_injects_and_reinjects_to_the_same_text() {
    let path = repo().join("examples/django-deployment.yaml");
    let input = fs::read_to_string(&path).unwrap();
    let first = preview::inject(&input, OutputFormat::Yaml, &Default::default()).unwrap();
    assert_eq!(first.mutated, 1);
    for needle in [
        "name: django-migrate-code",
        "name: django-migrate",
        "/django-migrate/step.pyz",
        "conditionType: django-migrate.io/migrated",
    ] {
        assert!(first.output.contains(needle), "missing {needle}");
    }
    let second = preview::inject(&first.output, OutputFormat::Yaml, &Default::default()).unwrap();
    assert_eq!(second.mutated, 0);
    assert_eq!(second.output, first.output);
}

/// `codeDelivery: imageVolume` on the example: one injected init container, the code image
/// as a read-only volume where the step reads it, a pod template smaller than with the
/// copy, idempotent, and switching between the two deliveries replaces one with the other.
#[test]
fn the_code_as_an_image_volume_shrinks_the_injection() {
    use django_migrate_webhook::injected::{CodeDelivery, CodeImage};
    use django_migrate_webhook::names::{CODE_VOLUME, MIGRATE_CONTAINER};
    let text = fs::read_to_string(repo().join("examples/django-deployment.yaml")).unwrap();
    let copy = CodeImage::default();
    let volume = CodeImage {
        delivery: CodeDelivery::ImageVolume,
        ..CodeImage::default()
    };
    let inject = |input: &str, image: &CodeImage| {
        let out = preview::inject(input, OutputFormat::Json, image).unwrap();
        let value: Value = serde_json::from_str(&out.output).unwrap();
        (out, value)
    };
    let (_, copied) = inject(&text, &copy);
    let (first, mounted) = inject(&text, &volume);
    assert!(
        first.warnings[0].contains(&format!("init container {MIGRATE_CONTAINER} (copied from")),
        "{:?}",
        first.warnings
    );
    let spec = &mounted["spec"]["template"]["spec"];
    let init: Vec<&str> = spec["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(init, [MIGRATE_CONTAINER]);
    let code: Vec<&Value> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["name"] == CODE_VOLUME)
        .collect();
    assert_eq!(
        code,
        [
            &json!({"name": CODE_VOLUME, "image": {"reference": volume.image, "pullPolicy": "IfNotPresent"}})
        ]
    );
    let step = &spec["initContainers"][0];
    assert!(
        step["volumeMounts"].as_array().unwrap().contains(
            &json!({"name": CODE_VOLUME, "mountPath": "/django-migrate", "readOnly": true})
        )
    );
    let size = |d: &Value| serde_json::to_vec(&d["spec"]["template"]).unwrap().len();
    eprintln!(
        "examples/django-deployment.yaml: pod template {} bytes with the copy, {} with the image volume",
        size(&copied),
        size(&mounted)
    );
    assert!(size(&mounted) < size(&copied));
    // Idempotent, and switching replaces the delivery.
    let (again, _) = inject(&first.output, &volume);
    assert_eq!(again.mutated, 0);
    let (_, switched) = inject(&first.output, &copy);
    assert_eq!(switched, copied);
    let (_, back) = inject(&serde_json::to_string(&copied).unwrap(), &volume);
    assert_eq!(back, mounted);
}
