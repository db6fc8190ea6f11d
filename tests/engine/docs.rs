//! The book's reference pages against the code: every annotation, condition reason,
//! Event reason, result, phase, exit code and alert the code knows is documented, nothing
//! documented is unknown to the code, the command-line page is the binary's own `--help`,
//! and what the chart's NOTES and `--help` say is injected is what the engine injects.
//! (The metrics are checked against the registry in `src/process.rs`.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use django_migrate_webhook::names::{
    self, CODE_CONTAINER, KNOWN_ANNOTATIONS, MIGRATE_CONTAINER, MIGRATED_CONDITION, PREFIX,
};
use django_migrate_webhook::step::Reason;
use django_migrate_webhook::summary::{Phase, StepResult};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn page(path: &str) -> String {
    let file = root().join("docs/src").join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// The words in backticks in the first column of the page's table rows.
fn first_column(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| l.split('|').nth(1))
        .flat_map(|cell| cell.split('`').skip(1).step_by(2).map(str::to_owned))
        .collect()
}

fn missing<'a>(text: &str, words: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    words
        .into_iter()
        .filter(|w| !text.contains(&format!("`{w}`")))
        .collect()
}

#[test]
fn every_annotation_is_in_the_reference_and_no_other() {
    let text = page("reference/annotations.md");
    let documented: BTreeSet<String> = first_column(&text)
        .into_iter()
        .filter(|w| w.starts_with(PREFIX))
        .collect();
    // The controller's own record is written, not set by teams: documented in prose.
    let settable: BTreeSet<String> = KNOWN_ANNOTATIONS
        .iter()
        .filter(|a| **a != names::CONTRACTED_RELEASES)
        .map(|a| (*a).to_owned())
        .collect();
    assert_eq!(
        documented, settable,
        "reference/annotations.md's table against names::KNOWN_ANNOTATIONS"
    );
    let everything = format!("{text}{}", page("how-to/gitops.md"));
    assert!(
        missing(&everything, [names::CONTRACTED_RELEASES]).is_empty(),
        "{} is not described",
        names::CONTRACTED_RELEASES
    );
}

#[test]
fn every_condition_reason_and_event_is_in_the_reference() {
    let text = page("reference/conditions.md");
    assert!(text.contains(MIGRATED_CONDITION));
    let reasons: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(missing(&text, reasons.iter().copied()), Vec::<&str>::new());
    let events = [
        names::event::MIGRATIONS_APPLIED,
        names::event::UNSAFE_MIGRATIONS_APPLIED,
        names::event::NOT_INJECTED,
        names::event::CONTRACT_PENDING,
        names::event::CONTRACT_APPLIED,
        names::event::CONTRACT_FAILED,
    ];
    assert_eq!(missing(&text, events), Vec::<&str>::new());
    // No reason in the table that the code does not have.
    let documented: BTreeSet<String> = text
        .lines()
        .filter(|l| l.starts_with("| `False`") || l.starts_with("| `True`"))
        .filter_map(|l| l.split("reason `").nth(1))
        .filter_map(|r| r.split('`').next())
        .map(str::to_owned)
        .collect();
    let known: BTreeSet<String> = reasons.iter().map(|r| (*r).to_owned()).collect();
    assert!(
        documented.is_subset(&known),
        "unknown: {:?}",
        documented.difference(&known).collect::<Vec<_>>()
    );
}

#[test]
fn every_result_phase_and_exit_code_is_in_the_reference() {
    let text = page("reference/exit-codes.md");
    let results: Vec<&str> = StepResult::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(missing(&text, results), Vec::<&str>::new());
    let phases: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
    assert_eq!(missing(&text, phases), Vec::<&str>::new());
    let codes = [
        names::exit::OK,
        names::exit::TIMEOUT,
        names::exit::MIGRATE_FAILED,
        names::exit::CREDENTIALS,
        names::exit::NOT_FOUND,
        names::exit::UNSAFE,
        names::exit::LOCK,
    ];
    let step = text.split("## The summary").next().unwrap();
    for code in codes {
        assert!(
            step.lines().any(|l| l.starts_with(&format!("| {code} |"))),
            "exit code {code} has no row in reference/exit-codes.md"
        );
    }
    let rows = step
        .lines()
        .filter(|l| l.starts_with("| ") && l.as_bytes()[2].is_ascii_digit());
    assert_eq!(
        rows.count(),
        codes.len(),
        "a documented exit code the step does not have"
    );
}

#[test]
fn every_alert_of_the_chart_is_described() {
    let rules = std::fs::read_to_string(
        root().join("charts/django-migrate-webhook/templates/prometheusrule.yaml"),
    )
    .unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::trim)
        .collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    assert_eq!(
        missing(&page("how-to/monitoring.md"), alerts),
        Vec::<&str>::new()
    );
}

#[test]
fn the_command_line_page_is_the_binarys_help() {
    let generated = django_migrate_webhook::cli::markdown_reference();
    let file = root().join("docs/src/reference/cli.md");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&file, &generated).unwrap();
    }
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        text == generated,
        "{} is not the binary's --help: UPDATE_GOLDEN=1 cargo test --test engine rewrites it",
        file.display()
    );
}

/// The init containers the engine injects into the example Deployment.
fn injected_init_containers() -> Vec<String> {
    let example = std::fs::read_to_string(root().join("examples/django-deployment.yaml")).unwrap();
    let out = django_migrate_webhook::preview::inject(
        &example,
        django_migrate_webhook::preview::OutputFormat::Json,
        &Default::default(),
    )
    .unwrap()
    .output;
    let value: serde_json::Value = serde_json::from_str(&out).unwrap();
    let deployment = if value["kind"] == "List" {
        &value["items"][0]
    } else {
        &value
    };
    let containers = deployment["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .unwrap();
    containers
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_chart_notes_name_what_is_injected() {
    let injected = injected_init_containers();
    assert_eq!(
        &injected[injected.len() - 2..],
        [CODE_CONTAINER, MIGRATE_CONTAINER]
    );
    let notes =
        std::fs::read_to_string(root().join("charts/django-migrate-webhook/templates/NOTES.txt"))
            .unwrap();
    let expected = notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("# -> "))
        .expect("NOTES.txt shows what kubectl prints");
    let named: Vec<&str> = expected
        .split_whitespace()
        .filter(|w| *w != "...")
        .collect();
    assert_eq!(
        named,
        [CODE_CONTAINER, MIGRATE_CONTAINER],
        "NOTES.txt: {expected}"
    );
    let legacy = names::LEGACY_WAIT_FOR_DB_CONTAINER;
    assert!(!notes.contains(legacy), "NOTES.txt names {legacy}");
}

#[test]
fn the_help_names_what_is_injected() {
    use clap::CommandFactory;
    let help = django_migrate_webhook::cli::Cli::command()
        .render_long_help()
        .to_string();
    for name in [CODE_CONTAINER, MIGRATE_CONTAINER, MIGRATED_CONDITION] {
        assert!(
            help.contains(&format!("`{name}`")),
            "--help does not name {name}:\n{help}"
        );
    }
    assert!(!help.contains("one Django init container"), "{help}");
    assert_eq!(
        injected_init_containers().len(),
        2,
        "the example has no init container of its own"
    );
}

#[test]
fn every_page_of_the_book_is_in_its_summary() {
    let src = root().join("docs/src");
    let summary = page("SUMMARY.md");
    let mut pages = Vec::new();
    collect(&src, &src, &mut pages);
    for p in &pages {
        assert!(
            p == "SUMMARY.md" || summary.contains(&format!("]({p})")),
            "docs/src/{p} is in no chapter of docs/src/SUMMARY.md"
        );
    }
}

fn collect(base: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(base, &path, out);
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(
                path.strip_prefix(base)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
}

/// mdBook's id of a heading: its text without markup, lowercase, spaces as dashes, only
/// letters, digits, `_` and `-` kept.
fn heading_id(heading: &str) -> String {
    heading
        .trim()
        .replace('`', "")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join("-")
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '_' || *c == '-')
        .flat_map(char::to_lowercase)
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut ids = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            ids.insert(heading_id(line.trim_start_matches('#')));
        }
    }
    ids
}

/// The link checker (`scripts/docs.sh`) checks pages, not their anchors: every `#anchor`
/// of a link between pages names a heading of the page it points at.
#[test]
fn every_anchor_of_a_link_names_a_heading() {
    let src = root().join("docs/src");
    let mut pages = Vec::new();
    collect(&src, &src, &mut pages);
    let mut broken = Vec::new();
    for p in &pages {
        let text = page(p);
        let dir = Path::new(p).parent().unwrap_or(Path::new(""));
        for (i, _) in text.match_indices("](") {
            let target = &text[i + 2..];
            let Some(end) = target.find(')') else {
                continue;
            };
            let target = &target[..end];
            let Some((file, anchor)) = target.split_once('#') else {
                continue;
            };
            if file.contains("://") {
                continue;
            }
            let linked = if file.is_empty() {
                p.clone()
            } else {
                normalize(&dir.join(file))
            };
            if !anchors(&page(&linked)).contains(anchor) {
                broken.push(format!("{p}: {target}"));
            }
        }
    }
    assert!(broken.is_empty(), "links to no heading: {broken:#?}");
}

fn normalize(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    parts.join("/")
}

/// The README is the front door into the book: every relative link of it names a file.
#[test]
fn every_link_of_the_readme_names_a_file() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut links = 0;
    for (i, _) in readme.match_indices("](") {
        let target = &readme[i + 2..];
        let target = &target[..target.find(')').unwrap()];
        let file = target.split('#').next().unwrap();
        if file.is_empty() || file.contains("://") {
            continue;
        }
        links += 1;
        assert!(
            root().join(file).exists(),
            "README.md links to {file}, which does not exist"
        );
    }
    assert!(links >= 20, "only {links} links into the book");
}

/// (part, version) pairs that `text` names: one of `parts` followed by versions, joined by
/// "and" ("Django 5.2 and 4.2", "PostgreSQL 17").
fn named_versions(text: &str, parts: &[&str]) -> BTreeSet<(String, String)> {
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || ",:()".contains(c))
        .filter(|w| !w.is_empty())
        .collect();
    let mut out = BTreeSet::new();
    for (i, word) in words.iter().enumerate() {
        if !parts.contains(word) {
            continue;
        }
        for next in words[i + 1..].iter().filter(|w| **w != "and") {
            if !next.starts_with(|c: char| c.is_ascii_digit())
                || !next.chars().all(|c| c.is_ascii_digit() || c == '.')
            {
                break;
            }
            out.insert(((*word).to_owned(), (*next).to_owned()));
        }
    }
    out
}

/// The compatibility page's "tested in CI" cell of the row for `part`, without what is in
/// parentheses.
fn tested_cell(page: &str, part: &str) -> String {
    let row = page
        .lines()
        .find(|l| l.starts_with(&format!("| {part} |")))
        .unwrap_or_else(|| panic!("compatibility.md has no row for {part}"));
    let cell = row.split('|').nth(2).unwrap_or_default();
    let mut plain = String::new();
    let mut depth = 0;
    for c in cell.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    plain
}

#[test]
fn the_compatibility_page_says_tested_exactly_for_what_the_test_script_runs() {
    const STACK: [&str; 5] = ["Python", "Django", "PostgreSQL", "MariaDB", "PgBouncer"];
    const DRIVERS: [&str; 3] = ["psycopg", "psycopg2", "mysqlclient"];
    let compatibility = page("reference/compatibility.md");
    let script = std::fs::read_to_string(root().join("scripts/test.sh")).unwrap();
    let stages: String = script
        .lines()
        .filter_map(|l| {
            l.split_once("timed \"")
                .map(|(_, rest)| rest.split('"').next().unwrap_or_default())
        })
        .collect::<Vec<_>>()
        .join("\n");
    let run = named_versions(&stages, &STACK);
    let claimed: BTreeSet<_> = STACK
        .iter()
        .flat_map(|part| {
            named_versions(
                &format!("{part} {}", tested_cell(&compatibility, part)),
                &[part],
            )
        })
        .collect();
    assert_eq!(
        claimed, run,
        "compatibility.md's tested column against scripts/test.sh's stages"
    );
    for part in STACK {
        assert!(
            run.iter().any(|(p, _)| p == part),
            "no stage of scripts/test.sh names {part}"
        );
    }

    // Django and the drivers the requirements files install.
    let mut installed = BTreeSet::new();
    for entry in std::fs::read_dir(root().join("tests")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.starts_with("requirements") && name.ends_with(".txt")) {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let Some((package, version)) = line.split_once("==") else {
                continue;
            };
            let package = package
                .split('[')
                .next()
                .unwrap()
                .trim_end_matches("-binary")
                .to_lowercase();
            let version = version.trim_end_matches(".*").to_owned();
            match package.as_str() {
                "django" => installed.insert(("Django".to_owned(), version)),
                p if DRIVERS.contains(&p) => installed.insert((p.to_owned(), version)),
                _ => false,
            };
        }
    }
    let django: BTreeSet<_> = installed
        .iter()
        .filter(|(p, _)| p == "Django")
        .cloned()
        .collect();
    let staged: BTreeSet<_> = run.iter().filter(|(p, _)| p == "Django").cloned().collect();
    assert_eq!(
        django, staged,
        "Django in tests/requirements*.txt against scripts/test.sh's stages"
    );
    let drivers: BTreeSet<_> = installed
        .into_iter()
        .filter(|(p, _)| p != "Django")
        .collect();
    assert_eq!(
        named_versions(&tested_cell(&compatibility, "drivers"), &DRIVERS),
        drivers,
        "compatibility.md's drivers against tests/requirements*.txt"
    );

    // Kubernetes: the versions scripts/test.sh runs by default.
    let lib = std::fs::read_to_string(root().join("scripts/lib.sh")).unwrap();
    let defaults: BTreeSet<String> = lib
        .lines()
        .find_map(|l| l.strip_prefix("KUBE_VERSIONS_DEFAULT="))
        .unwrap()
        .trim_matches('"')
        .split_whitespace()
        .map(|v| format!("v{v}"))
        .collect();
    let kubernetes: BTreeSet<String> = tested_cell(&compatibility, "Kubernetes")
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| w.starts_with('v') && w[1..].starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        kubernetes, defaults,
        "compatibility.md's Kubernetes against KUBE_VERSIONS_DEFAULT"
    );
}
