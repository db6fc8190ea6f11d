//! Plan mode's report: what a release's pending migrations would do to the database, as
//! the step prints it (one JSON line on its stdout, schema version 1), and how `plan`
//! shows it: a table for people, Markdown for a pull-request comment, JSON for programs.
//! Fields a newer step adds are ignored; the JSON output is the step's own line, so they
//! reach programs all the same.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::summary::{StepResult, string_enum};
use crate::text;

/// The start of the report's line in the step's log; the schema version follows.
pub const REPORT_PREFIX: &str = "{\"django_migrate_plan\":";

/// Longest finding shown in a table cell; the full text follows under "Findings".
const CELL_WHY: usize = 72;

string_enum! {
    /// What the rollout would do with the pending migrations.
    Verdict {
        /// Every pending migration would be applied (or deferred to the contract run).
        Pass = "pass",
        /// `unsafe-migrations: deny` would hold back the release's migrations.
        HeldBack = "held-back",
        /// The step would refuse (a migration that must run after a deferred one).
        Blocked = "blocked",
        NothingPending = "nothing-pending",
    }
}

string_enum! {
    /// What the Deployment's settings would do with one migration.
    Action {
        Apply = "apply",
        HoldBack = "hold-back",
        Defer = "defer",
        Block = "block",
    }
}

string_enum! {
    /// A finding's harm: `breaking` (the release still serving fails against the migrated
    /// database) or `locking` (a lock that blocks traffic for as long as it takes).
    FindingKind {
        Breaking = "breaking",
        Locking = "locking",
    }
}

/// What `plan` exits with: a pipeline gates on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The rollout would pass (`pass`, `nothing-pending`).
    Pass,
    /// The plan could not be made: the step failed, timed out, or never ran.
    NotMade,
    /// The rollout would be held back or blocked.
    HeldBack,
    /// The cluster could not be read, or the Job not created or read.
    Cluster,
}

impl Outcome {
    pub fn code(self) -> u8 {
        match self {
            Outcome::Pass => 0,
            Outcome::NotMade => 1,
            // The step's own code for a held-back plan (`names::exit::UNSAFE`).
            Outcome::HeldBack => 5,
            Outcome::Cluster => 3,
        }
    }

    /// The outcome of a step's summary, for when its report cannot be read.
    pub fn of_summary(result: StepResult, plan: Option<&Outline>) -> Outcome {
        if let Some(o) = plan.and_then(|p| p.verdict.outcome()) {
            return o;
        }
        match result {
            StepResult::Planned | StepResult::NothingPending => Outcome::Pass,
            StepResult::UnsafeBlocked
            | StepResult::LockingBlocked
            | StepResult::DeferredBlocked => Outcome::HeldBack,
            _ => Outcome::NotMade,
        }
    }
}

impl Verdict {
    /// `None` for a verdict this release does not know.
    pub fn outcome(self) -> Option<Outcome> {
        match self {
            Verdict::Pass | Verdict::NothingPending => Some(Outcome::Pass),
            Verdict::HeldBack | Verdict::Blocked => Some(Outcome::HeldBack),
            Verdict::Unknown => None,
        }
    }

    /// For headings: `pass`, `held back`, ...
    fn words(self) -> String {
        self.as_str().replace('-', " ")
    }
}

/// The summary's part of a plan (`Summary::plan`): the report's verdict and counts, for
/// when its log line cannot be read.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Outline {
    pub verdict: Verdict,
    pub counts: Counts,
}

/// The step's report.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Report {
    /// The schema version.
    #[serde(rename = "django_migrate_plan")]
    pub schema: u32,
    pub verdict: Verdict,
    /// One line for people.
    pub message: String,
    pub database: Database,
    /// No migration of the project was applied yet: the release installs the schema.
    pub first_install: bool,
    pub settings: PlanSettings,
    pub counts: Counts,
    /// The pending migrations, in plan order.
    pub migrations: Vec<Migration>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Database {
    pub alias: String,
    pub vendor: String,
    pub version: Option<String>,
}

/// The Deployment's settings the plan was made under (its annotations, as the step read
/// them).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct PlanSettings {
    pub unsafe_migrations: String,
    pub hold_back: Vec<String>,
    pub locking_min_rows: Option<u64>,
    pub allow_unsafe: Vec<String>,
    pub defer: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct Counts {
    pub pending: u64,
    pub apply: u64,
    pub hold_back: u64,
    pub defer: u64,
    pub block: u64,
    /// Findings of each kind.
    pub breaking: u64,
    pub locking: u64,
    /// Data migrations (RunPython, RunSQL) to review by hand.
    pub data: u64,
}

/// One pending migration.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Migration {
    /// `app_label.migration_name`.
    pub migration: String,
    pub action: Action,
    /// Why it is held back, deferred or blocked.
    pub why: Option<String>,
    pub atomic: bool,
    pub operations: Vec<Operation>,
}

impl Default for Migration {
    fn default() -> Migration {
        Migration {
            migration: String::new(),
            action: Action::default(),
            why: None,
            atomic: true,
            operations: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Operation {
    /// The operation as Django describes it.
    pub operation: String,
    /// RunPython or RunSQL: it cannot be checked for safety.
    pub data: bool,
    pub findings: Vec<Finding>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Finding {
    pub kind: FindingKind,
    pub why: String,
    /// `deny` would hold it back (and with it the release's migrations).
    pub held_back: bool,
    /// Allowed by name (`django-migrate.io/allow-unsafe`).
    pub allowed: bool,
    /// For `locking`: the lock, the table and its estimated size.
    pub lock: Option<String>,
    pub table: Option<String>,
    pub rows: Option<i64>,
    pub bytes: Option<i64>,
}

impl Finding {
    /// `SHARE on shop_order ~200,000 rows 12.3 MiB`, or `None` without a lock.
    fn lock_line(&self) -> Option<String> {
        let mut line = self.lock.clone()?;
        if let Some(table) = &self.table {
            let _ = write!(line, " on {table}");
        }
        if let Some(rows) = self.rows {
            let _ = write!(line, " ~{} rows", thousands(rows));
        }
        if let Some(bytes) = self.bytes {
            let _ = write!(line, " {}", size(bytes));
        }
        Some(line)
    }

    /// The finding in a few words, for a table cell.
    fn short(&self) -> String {
        match self.lock_line() {
            Some(lock) => format!("{}: {lock}", self.kind),
            None => text::cut_to(&format!("{}: {}", self.kind, self.why), CELL_WHY),
        }
    }

    /// The finding in full: kind, lock, why, and what the settings do with it.
    fn full(&self) -> String {
        let mut line = self.kind.to_string();
        if let Some(lock) = self.lock_line() {
            let _ = write!(line, " ({lock})");
        }
        let _ = write!(line, ": {}", self.why);
        if self.held_back {
            line.push_str(" [held back]");
        }
        if self.allowed {
            line.push_str(" [allowed by name]");
        }
        line
    }
}

impl Migration {
    fn findings(&self) -> impl Iterator<Item = (&Operation, &Finding)> {
        self.operations
            .iter()
            .flat_map(|o| o.findings.iter().map(move |f| (o, f)))
    }

    /// The findings in a few words: the first, and how many more.
    fn findings_cell(&self) -> String {
        let mut all = self.findings();
        let Some((_, first)) = all.next() else {
            return if self.operations.iter().any(|o| o.data) {
                "data: review by hand".to_owned()
            } else {
                "-".to_owned()
            };
        };
        let more = all.count();
        if more == 0 {
            first.short()
        } else {
            format!("{} (+{more} more)", first.short())
        }
    }

    /// What the settings do with it, with why when it is not applied.
    fn action_line(&self) -> String {
        match &self.why {
            Some(why) if self.action != Action::Apply => format!("{}: {why}", self.action),
            _ => self.action.to_string(),
        }
    }

    /// Worth a line under "Findings": a finding, or a reason it is not applied.
    fn has_details(&self) -> bool {
        self.findings().next().is_some() || (self.action != Action::Apply && self.why.is_some())
    }
}

impl Report {
    /// The report of a step's log: its last line that is one. `None` when the log has
    /// none (the step failed before it, or is of an earlier release).
    pub fn find_line(log: &str) -> Option<&str> {
        log.lines()
            .map(str::trim)
            .rfind(|l| l.starts_with(REPORT_PREFIX))
    }

    pub fn parse(line: &str) -> Result<Report, serde_json::Error> {
        serde_json::from_str(line)
    }

    /// What `plan` exits with: by the verdict, or by the step's exit code for a verdict
    /// this release does not know.
    pub fn outcome(&self, exit_code: i32) -> Outcome {
        self.verdict.outcome().unwrap_or(match exit_code {
            0 => Outcome::Pass,
            crate::names::exit::UNSAFE => Outcome::HeldBack,
            _ => Outcome::NotMade,
        })
    }

    fn database_line(&self) -> String {
        let d = &self.database;
        let mut line = format!("{} ({}", d.alias, d.vendor);
        if let Some(v) = &d.version {
            let _ = write!(line, " {v}");
        }
        line.push(')');
        if self.first_install {
            line.push_str(", first install: no migration applied yet");
        }
        line
    }

    fn settings_line(&self) -> String {
        let s = &self.settings;
        let list = |items: &[String]| {
            if items.is_empty() {
                "-".to_owned()
            } else {
                items.join(",")
            }
        };
        let mut line = format!(
            "unsafe-migrations={} hold-back={}",
            s.unsafe_migrations,
            list(&s.hold_back)
        );
        if let Some(rows) = s.locking_min_rows {
            let _ = write!(line, " locking-min-rows={rows}");
        }
        let _ = write!(
            line,
            " allow-unsafe={} defer={}",
            list(&s.allow_unsafe),
            list(&s.defer)
        );
        line
    }

    fn counts_line(&self) -> String {
        let c = &self.counts;
        format!(
            "{} pending: {} apply, {} held back, {} deferred, {} blocked; findings: {} breaking, {} locking; {} data migration operation(s)",
            c.pending, c.apply, c.hold_back, c.defer, c.block, c.breaking, c.locking, c.data
        )
    }

    fn data_operations(&self) -> impl Iterator<Item = (&Migration, &Operation)> {
        self.migrations
            .iter()
            .flat_map(|m| m.operations.iter().map(move |o| (m, o)))
            .filter(|(_, o)| o.data)
    }

    /// For people: the verdict, the database and settings, one row per migration, then
    /// each finding in full and the data migrations to review by hand. `about` names what
    /// was planned (`deployment prod/shop, image shop:3`).
    pub fn table(&self, about: &str) -> String {
        let mut out = format!("plan for {about}: {}\n", self.verdict);
        let _ = writeln!(out, "  {}", self.message);
        let _ = writeln!(out, "database: {}", self.database_line());
        let _ = writeln!(out, "settings: {}", self.settings_line());
        let _ = writeln!(out, "{}", self.counts_line());
        if self.migrations.is_empty() {
            return out;
        }
        let mut rows = vec![vec![
            "MIGRATION".to_owned(),
            "ACTION".to_owned(),
            "OPERATIONS".to_owned(),
            "FINDINGS".to_owned(),
        ]];
        rows.extend(self.migrations.iter().map(|m| {
            vec![
                m.migration.clone(),
                m.action.to_string(),
                m.operations.len().to_string(),
                m.findings_cell(),
            ]
        }));
        out.push('\n');
        for line in text::columns(&rows) {
            let _ = writeln!(out, "{line}");
        }
        let detailed: Vec<&Migration> =
            self.migrations.iter().filter(|m| m.has_details()).collect();
        if !detailed.is_empty() {
            out.push_str("\nFindings:\n");
            for m in detailed {
                let _ = writeln!(out, "  {} ({})", m.migration, m.action_line());
                for o in m.operations.iter().filter(|o| !o.findings.is_empty()) {
                    let _ = writeln!(out, "    {}", o.operation);
                    for f in &o.findings {
                        let _ = writeln!(out, "      {}", f.full());
                    }
                }
            }
        }
        let mut data = self.data_operations().peekable();
        if data.peek().is_some() {
            out.push_str("\nData migrations (cannot be checked for safety: review by hand):\n");
            for (m, o) in data {
                let _ = writeln!(out, "  {}: {}", m.migration, o.operation);
            }
        }
        out
    }

    /// For a pull-request comment (GitHub-flavoured): a heading with the verdict, a table
    /// of the migrations, then the findings and the data migrations.
    pub fn markdown(&self, about: &str) -> String {
        let mut out = format!(
            "### Migration plan for {}: {}\n\n{}\n\n",
            escape(about),
            self.verdict.words(),
            escape(&self.message)
        );
        let _ = writeln!(
            out,
            "Database {}. Settings: {}.\n",
            code(&self.database_line()),
            code(&self.settings_line())
        );
        let _ = writeln!(out, "{}.", escape(&self.counts_line()));
        if self.migrations.is_empty() {
            return out;
        }
        out.push_str("\n| Migration | Action | Operations | Findings |\n|---|---|---|---|\n");
        for m in &self.migrations {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                cell(&code(&m.migration)),
                escape(m.action.as_str()),
                m.operations.len(),
                escape(&m.findings_cell())
            );
        }
        let detailed: Vec<&Migration> =
            self.migrations.iter().filter(|m| m.has_details()).collect();
        if !detailed.is_empty() {
            out.push_str("\n#### Findings\n\n");
            for m in detailed {
                let _ = writeln!(
                    out,
                    "- {} ({})",
                    code(&m.migration),
                    escape(&m.action_line())
                );
                for (o, f) in m.findings() {
                    let _ = writeln!(out, "  - {}: {}", code(&o.operation), escape(&f.full()));
                }
            }
        }
        let mut data = self.data_operations().peekable();
        if data.peek().is_some() {
            out.push_str(
                "\n#### Data migrations\n\nThey cannot be checked for safety: review them by hand.\n\n",
            );
            for (m, o) in data {
                let _ = writeln!(out, "- {}: {}", code(&m.migration), code(&o.operation));
            }
        }
        out
    }
}

/// The report's line as indented JSON, every field of the step's kept.
pub fn pretty_json(line: &str) -> Result<String, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_str(line)?;
    Ok(serde_json::to_string_pretty(&value)? + "\n")
}

/// `200000` as `200,000`.
fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// Bytes in binary units, one decimal: `12.3 MiB`.
fn size(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes.unsigned_abs() < 1024 {
        return format!("{bytes} B");
    }
    #[allow(clippy::cast_precision_loss, reason = "one decimal is shown")]
    let mut value = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value.abs() < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

/// Markdown text on one line, with what would start markup outside a code span escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\r' => out.push(' '),
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// A Markdown code span, on one line, fenced by more backticks than it contains.
fn code(text: &str) -> String {
    let text = text.replace(['\n', '\r'], " ");
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    let pad = if text.starts_with('`') || text.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{text}{pad}{fence}")
}

/// A table cell: GitHub splits cells on every `|` not escaped, code spans included.
fn cell(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut escaped = false;
    for c in text.chars() {
        if c == '|' && !escaped {
            out.push('\\');
        }
        escaped = c == '\\' && !escaped;
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"{"django_migrate_plan": 1, "verdict": "held-back", "message": "1 breaking operation would be held back (unsafe-migrations: deny)", "database": {"alias": "default", "vendor": "postgresql", "version": "17.2"}, "first_install": false, "settings": {"unsafe_migrations": "deny", "hold_back": ["breaking"], "locking_min_rows": 100000, "allow_unsafe": [], "defer": []}, "counts": {"pending": 3, "apply": 2, "hold_back": 1, "defer": 0, "block": 0, "breaking": 1, "locking": 1, "data": 1}, "migrations": [{"migration": "shop.0002_order_code_index", "action": "apply", "why": null, "atomic": true, "operations": [{"operation": "AddIndex(Create index shop_order_code_idx on field(s) code of model order)", "data": false, "findings": [{"kind": "locking", "why": "holds SHARE (blocks writes) on shop_order (~200000 rows, 12.3 MiB) while it builds index shop_order_code_idx without CONCURRENTLY", "held_back": false, "allowed": false, "lock": "SHARE", "table": "shop_order", "rows": 200000, "bytes": 12902400}]}]}, {"migration": "shop.0003_drop_legacy", "action": "hold-back", "why": "breaks the release still serving | deny", "atomic": true, "operations": [{"operation": "RemoveField(product.legacy_code)", "data": false, "findings": [{"kind": "breaking", "why": "drops column legacy_code that the release still serving reads", "held_back": true, "allowed": false, "lock": null, "table": null, "rows": null, "bytes": null, "new_in_v2": 1}]}]}, {"migration": "shop.0004_backfill", "action": "apply", "why": null, "atomic": false, "operations": [{"operation": "RunPython(backfill_codes)", "data": true, "findings": []}]}], "future": {"x": 1}}"#;

    fn log() -> String {
        format!(
            "django-migrate plan [setup]: starting Django\n{{\"not\": \"a report\"}}\n{{\"django_migrate_plan\": 1, \"verdict\": \"pass\"}}\n  {REPORT}  \ndjango-migrate plan [done]: held back\n"
        )
    }

    #[test]
    fn the_last_report_line_of_the_log_is_the_report() {
        let log = log();
        let line = Report::find_line(&log).unwrap();
        let report = Report::parse(line).unwrap();
        assert_eq!(report.schema, 1);
        assert_eq!(report.verdict, Verdict::HeldBack);
        assert_eq!(report.database.version.as_deref(), Some("17.2"));
        assert_eq!(report.settings.locking_min_rows, Some(100_000));
        assert_eq!(report.counts.hold_back, 1);
        assert_eq!(report.migrations.len(), 3);
        assert_eq!(report.migrations[1].action, Action::HoldBack);
        assert!(!report.migrations[2].atomic);
        let f = &report.migrations[0].operations[0].findings[0];
        assert_eq!(
            (f.kind, f.rows, f.bytes),
            (FindingKind::Locking, Some(200_000), Some(12_902_400))
        );
        assert!(report.migrations[2].operations[0].data);
        assert_eq!(
            Report::find_line("django-migrate plan [database]: no\n"),
            None
        );
        // Fields left out take their defaults; a migration is atomic unless it says not.
        let sparse = Report::parse(
            r#"{"django_migrate_plan": 1, "verdict": "shiny", "migrations": [{"migration": "a.0001"}]}"#,
        )
        .unwrap();
        assert_eq!(sparse.verdict, Verdict::Unknown);
        assert!(sparse.migrations[0].atomic);
        // The JSON output keeps what this release does not know.
        let pretty = pretty_json(line).unwrap();
        assert!(pretty.contains("\"new_in_v2\": 1") && pretty.contains("\"future\""));
    }

    #[test]
    fn the_exit_code_follows_the_verdict_else_the_step() {
        let report = |verdict: Verdict| Report {
            verdict,
            ..Report::default()
        };
        assert_eq!(report(Verdict::Pass).outcome(5), Outcome::Pass);
        assert_eq!(report(Verdict::NothingPending).outcome(0), Outcome::Pass);
        assert_eq!(report(Verdict::HeldBack).outcome(5), Outcome::HeldBack);
        assert_eq!(report(Verdict::Blocked).outcome(5), Outcome::HeldBack);
        assert_eq!(report(Verdict::Unknown).outcome(0), Outcome::Pass);
        assert_eq!(report(Verdict::Unknown).outcome(5), Outcome::HeldBack);
        assert_eq!(report(Verdict::Unknown).outcome(3), Outcome::NotMade);
        let codes: Vec<u8> = [
            Outcome::Pass,
            Outcome::NotMade,
            Outcome::HeldBack,
            Outcome::Cluster,
        ]
        .iter()
        .map(|o| o.code())
        .collect();
        // Held back is the step's own code; 2 stays clap's, for bad arguments.
        assert_eq!(codes, [0, 1, 5, 3]);
        assert_eq!(
            i32::from(Outcome::HeldBack.code()),
            crate::names::exit::UNSAFE
        );
        for (result, outcome) in [
            (StepResult::Planned, Outcome::Pass),
            (StepResult::NothingPending, Outcome::Pass),
            (StepResult::UnsafeBlocked, Outcome::HeldBack),
            (StepResult::LockingBlocked, Outcome::HeldBack),
            (StepResult::DeferredBlocked, Outcome::HeldBack),
            (StepResult::Timeout, Outcome::NotMade),
            (StepResult::CredentialsRejected, Outcome::NotMade),
            (StepResult::NotFound, Outcome::NotMade),
            (StepResult::Failed, Outcome::NotMade),
            (StepResult::Unknown, Outcome::NotMade),
        ] {
            assert_eq!(Outcome::of_summary(result, None), outcome, "{result}");
        }
        let held = Outline {
            verdict: Verdict::HeldBack,
            ..Outline::default()
        };
        assert_eq!(
            Outcome::of_summary(StepResult::Unknown, Some(&held)),
            Outcome::HeldBack
        );
        let summary = crate::summary::Summary::parse(
            r#"{"mode": "plan", "result": "planned", "exit_code": 0, "plan": {"verdict": "pass", "counts": {"pending": 2, "apply": 2}}}"#,
        )
        .unwrap();
        assert_eq!(summary.result, StepResult::Planned);
        assert_eq!(summary.plan.as_ref().unwrap().counts.apply, 2);
    }

    #[test]
    fn the_table_shows_each_migration_then_each_finding_in_full() {
        let report = Report::parse(REPORT).unwrap();
        let table = report.table("deployment prod/shop, image shop:3");
        let expected = "\
plan for deployment prod/shop, image shop:3: held-back
  1 breaking operation would be held back (unsafe-migrations: deny)
database: default (postgresql 17.2)
settings: unsafe-migrations=deny hold-back=breaking locking-min-rows=100000 allow-unsafe=- defer=-
3 pending: 2 apply, 1 held back, 0 deferred, 0 blocked; findings: 1 breaking, 1 locking; 1 data migration operation(s)

MIGRATION                   ACTION     OPERATIONS  FINDINGS
shop.0002_order_code_index  apply      1           locking: SHARE on shop_order ~200,000 rows 12.3 MiB
shop.0003_drop_legacy       hold-back  1           breaking: drops column legacy_code that the release still serving reads
shop.0004_backfill          apply      1           data: review by hand

Findings:
  shop.0002_order_code_index (apply)
    AddIndex(Create index shop_order_code_idx on field(s) code of model order)
      locking (SHARE on shop_order ~200,000 rows 12.3 MiB): holds SHARE (blocks writes) on shop_order (~200000 rows, 12.3 MiB) while it builds index shop_order_code_idx without CONCURRENTLY
  shop.0003_drop_legacy (hold-back: breaks the release still serving | deny)
    RemoveField(product.legacy_code)
      breaking: drops column legacy_code that the release still serving reads [held back]

Data migrations (cannot be checked for safety: review by hand):
  shop.0004_backfill: RunPython(backfill_codes)
";
        assert_eq!(table, expected);
        let nothing = Report {
            verdict: Verdict::NothingPending,
            message: "no migration is pending".into(),
            first_install: true,
            ..Report::default()
        };
        let table = nothing.table("deployment prod/shop");
        assert!(table.contains("first install"), "{table}");
        assert!(!table.contains("MIGRATION"), "{table}");
    }

    #[test]
    fn markdown_for_a_pull_request_escapes_what_github_would_read_as_markup() {
        let report = Report::parse(REPORT).unwrap();
        let md = report.markdown("deployment prod/shop");
        assert!(md.starts_with("### Migration plan for deployment prod/shop: held back\n\n"));
        assert!(md.contains(
            "| `shop.0002_order_code_index` | apply | 1 | locking: SHARE on shop\\_order ~200,000 rows 12.3 MiB |"
        ), "{md}");
        assert!(md.contains("\n#### Findings\n"));
        assert!(md.contains(
            "- `shop.0003_drop_legacy` (hold-back: breaks the release still serving \\| deny)\n  - `RemoveField(product.legacy_code)`: breaking: drops column legacy\\_code"
        ), "{md}");
        assert!(md.contains("- `shop.0004_backfill`: `RunPython(backfill_codes)`"));
        // No table row has more cells than the header.
        for row in md.lines().filter(|l| l.starts_with("| ")) {
            let cells = row.replace("\\|", "").matches('|').count();
            assert_eq!(cells, 5, "{row}");
        }
        assert_eq!(cell(&code("a|b")), "`a\\|b`");
        assert_eq!(cell("a\\|b"), "a\\|b");
        assert_eq!(code("x`y"), "``x`y``");
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(thousands(200_000), "200,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(size(12_902_400), "12.3 MiB");
        assert_eq!(size(512), "512 B");
        assert_eq!(size(2048), "2.0 KiB");
        assert_eq!(size(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }
}
