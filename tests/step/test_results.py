"""The step's exit codes and results: the ones the webhook's side knows (src/names.rs,
src/summary.rs) and the reference documents (docs/src/reference/exit-codes.md), and which
code and result each way of ending gives."""

import pathlib
import re

import pytest
from django.db import migrations, models
from django_migrate_step import config, migrate, runner
from django_migrate_step.lock import lock_unavailable
from django_migrate_step.migrate import half_applied, hold_back_unsafe, lock_lost, signal_failed
from django_migrate_step.progress import Progress
from django_migrate_step.summary import Report, StepEnded, not_found
from plans import check_constraint, plan

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXITS = {
    "EXIT_OK": 0,
    "EXIT_TIMEOUT": 1,
    "EXIT_MIGRATE_FAILED": 2,
    "EXIT_CREDENTIALS": 3,
    "EXIT_NOT_FOUND": 4,
    "EXIT_UNSAFE": 5,
    "EXIT_LOCK": 6,
}


def results():
    return {name: value for name, value in vars(config).items() if name.startswith("RESULT_")}


def test_the_exit_codes_are_the_ones_of_the_webhooks_side_and_the_reference():
    assert {name: getattr(config, name) for name in EXITS} == EXITS
    names_rs = (ROOT / "src" / "names.rs").read_text()
    block = names_rs[names_rs.index("pub mod exit {") :]
    rust = dict(re.findall(r"pub const (\w+): i32 = (\d+);", block[: block.index("\n}")]))
    assert {"EXIT_" + k: int(v) for k, v in rust.items()} == EXITS
    reference = (ROOT / "docs" / "src" / "reference" / "exit-codes.md").read_text()
    step = reference[: reference.index("## The summary")]
    assert sorted(int(code) for code in re.findall(r"^\| (\d) \|", step, re.M)) == sorted(EXITS.values())


def test_the_results_are_the_ones_the_controller_knows_and_the_reference_lists():
    summary_rs = (ROOT / "src" / "summary.rs").read_text()
    block = summary_rs[summary_rs.index("    StepResult {") :]
    rust = set(re.findall(r'= "([a-z-]+)",', block[: block.index("\n    }")]))
    assert set(results().values()) == rust
    for name, value in results().items():
        assert name == "RESULT_" + value.upper().replace("-", "_")
    reference = (ROOT / "docs" / "src" / "reference" / "exit-codes.md").read_text()
    listed = reference[reference.index("`result` is one of") + len("`result`") : reference.index("`phase` is")]
    assert set(re.findall(r"`([a-z-]+)`", listed)) == rust


def ended(end):
    return end.code, end.result


def test_how_each_end_is_told(postgresql, mysql, monkeypatch):
    assert ended(not_found("manage.py not found")) == (4, "not-found")
    assert ended(lock_unavailable("statement pooling")) == (6, "lock-unavailable")
    assert "statement pooling" in lock_unavailable("statement pooling").message

    progress = Progress()
    progress.statements, progress.ran = 2, ["CREATE TABLE a", "CREATE INDEX b"]
    end = half_applied(postgresql, "shop.0002_change", progress, "then it failed")
    assert ended(end) == (2, "half-applied")
    assert "the migration is not atomic" in end.message
    assert "manage.py migrate shop 0002_change --fake" in end.message
    assert "MariaDB cannot roll DDL back" in half_applied(mysql, "shop.0002_change", progress, "then").message

    report = Report()
    assert ended(signal_failed("pre_migrate", RuntimeError("boom"), report)) == (2, "failed")
    end = signal_failed("post_migrate", RuntimeError("boom"), report)
    assert ended(end) == (2, "post-migrate-failed")
    assert report.post_migrate["failed"] == "post_migrate"

    monkeypatch.setattr(migrate, "pending_kept", lambda connection, report: ["shop.0003_next"])
    report = Report()
    end = lock_lost(postgresql, report, Progress(), "shop.0002_change", True, "its connection failed")
    assert ended(end) == (6, "lock-lost")
    assert "shop.0002_change was rolled back" in end.message
    assert report.pending == ["shop.0003_next"]


@pytest.fixture
def denied(monkeypatch):
    monkeypatch.setattr("django_migrate_step.classifier.UNSAFE_MIGRATIONS", "deny")
    monkeypatch.setattr("django_migrate_step.classifier.HOLD_BACK", {"breaking", "locking"})
    monkeypatch.setattr("django_migrate_step.classifier.table_size", lambda c, t, r: (10**6, 10**8))
    monkeypatch.setattr(migrate, "UNSAFE_MIGRATIONS", "deny")
    monkeypatch.setattr(migrate, "HOLD_BACK", {"breaking", "locking"})


def held(monkeypatch, connection, *operations):
    monkeypatch.setattr(migrate, "pending_plan", lambda c: (plan(list(operations)), False))
    report = Report()
    with pytest.raises(StepEnded) as raised:
        hold_back_unsafe(connection, report)
    return raised.value, report


def test_deny_ends_with_exit_5_and_says_which_kind(postgresql, monkeypatch, denied):
    end, report = held(monkeypatch, postgresql, migrations.RemoveField("Product", "note"))
    assert ended(end) == (5, "unsafe-blocked")
    assert "held back 1 operation(s)" in end.message and "ship it in a later release" in end.message
    assert report.unsafe_operations[0]["held_back"] is True

    index = migrations.AddIndex("Product", models.Index(fields=["name"], name="i"))
    end, _report = held(monkeypatch, postgresql, index)
    assert ended(end) == (5, "locking-blocked")
    assert "use a non-blocking form" in end.message

    check = migrations.AddConstraint("Product", check_constraint(models.Q(), "c"))
    end, report = held(monkeypatch, postgresql, check)
    assert ended(end) == (5, "unsafe-blocked")
    assert {u["kind"] for u in report.unsafe_operations} == {"breaking", "locking"}


def test_an_unexpected_error_ends_the_step_with_exit_2_and_one_line(monkeypatch):
    def fail(report):
        report.phase = "database"
        raise KeyError("surprise")

    ends = []
    monkeypatch.setattr(runner, "run_outer", fail)
    monkeypatch.setattr(runner, "end", lambda report, code, result, message: ends.append((code, result, message)))
    runner.main()
    assert ends == [(2, "failed", "unexpected error in phase database: KeyError: 'surprise'")]


def test_the_outer_phase_passes_the_inner_phases_code_through(monkeypatch):
    ends = []
    monkeypatch.setattr(runner, "run_outer", lambda report: 3)
    monkeypatch.setattr(runner, "end", lambda report, code, result, message: ends.append((code, result, message)))
    runner.main()
    assert ends == [(3, None, None)]
