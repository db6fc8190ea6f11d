"""The summary's cut rules: at most 4 KiB of JSON; prose is cut before lists (the message to
500 characters, each unsafe operation's why to 100), lists keep their first entries (the
deferred ones, which the contract run is planned from, last), the counts never; and the
short names a message gives of a long list."""

import json

import pytest
from django_migrate_step import summary
from django_migrate_step.config import MAX_SUMMARY_BYTES
from django_migrate_step.summary import Report, end, name_list, shorten


def migrations(n, app="shop"):
    return ["%s.%04d_a_migration_with_a_long_descriptive_name" % (app, i) for i in range(n)]


def unsafe(n, why="x" * 400):
    return [
        {"migration": m, "operation": "RemoveField(name='legacy')", "kind": "breaking", "why": why, "applied": False}
        for m in migrations(n)
    ]


def written(report, message="done"):
    text = report.summary(0, "applied", message)
    assert len(text.encode()) <= MAX_SUMMARY_BYTES
    return json.loads(text)


def test_a_small_summary_is_whole():
    report = Report()
    report.applied = migrations(3)
    report.deferred = [{"migration": "shop.0009_drop", "why": "named in django-migrate.io/defer", "delay": 300.0}]
    data = written(report, "applied 3 migrations")
    assert data["applied"] == migrations(3)
    assert data["message"] == "applied 3 migrations"
    assert data["counts"] == {"applied": 3, "pending": 0, "unsafe": 0, "held_back": 0, "deferred": 1}
    assert data["contract_delay_seconds"] == 300.0
    assert (data["mode"], data["result"], data["exit_code"], data["phase"]) == ("migrate", "applied", 0, "setup")


def test_lists_are_cut_to_their_first_entries_and_the_counts_stay():
    report = Report()
    report.pending = migrations(500)
    data = written(report)
    assert 0 < len(data["pending"]) < 500
    assert data["pending"] == migrations(500)[: len(data["pending"])]
    assert data["counts"]["pending"] == 500
    # The longest prefix that fits: one more entry would not.
    data["pending"] = migrations(500)[: len(data["pending"]) + 1]
    assert len(json.dumps(data, separators=(",", ":")).encode()) > MAX_SUMMARY_BYTES


def test_the_message_is_cut_before_any_list():
    report = Report()
    report.applied = migrations(20)
    data = written(report, "m" * 10000)
    assert data["message"] == "m" * 497 + "..."
    assert data["applied"] == migrations(20)


def test_each_unsafe_operations_why_is_cut_before_the_lists():
    report = Report()
    report.unsafe_operations = unsafe(12)
    data = written(report)
    assert len(data["unsafe_operations"]) == 12
    assert all(u["why"] == "x" * 97 + "..." for u in data["unsafe_operations"])
    # The report's own entries are not cut: the summary cuts a copy.
    assert report.unsafe_operations[0]["why"] == "x" * 400
    assert data["counts"]["unsafe"] == 12


def test_the_deferred_ones_are_cut_last():
    report = Report()
    report.pending = migrations(200)
    report.applied = migrations(200, "orders")
    report.deferred = [{"migration": m, "why": "marked Safe.after_deploy()", "delay": None} for m in migrations(15)]
    data = written(report)
    assert len(data["deferred"]) == 15
    assert data["pending"] == []
    assert data["counts"] == {"applied": 200, "pending": 200, "unsafe": 0, "held_back": 0, "deferred": 15}


def test_strings_longer_than_any_name_give_way_last():
    report = Report()
    report.failed_migration = "f" * 20000
    data = written(report, "m" * 20000)
    assert data["failed_migration"] and set(data["failed_migration"]) == {"f"}
    assert data["counts"]["applied"] == 0


def test_a_message_names_the_first_few_then_how_many_more():
    assert name_list([]) == ""
    assert name_list(["a.1", "b.2"]) == "a.1, b.2"
    assert name_list("n.%d" % i for i in range(25)) == ", ".join("n.%d" % i for i in range(10)) + " and 15 more"
    long_names = migrations(40)
    text = name_list(long_names)
    assert text.endswith(" more") and len(text) <= 300 + len(" and 40 more")
    # At least one name, however long.
    assert name_list(["x" * 1000, "y"]) == "x" * 1000 + " and 1 more"


def test_shorten():
    assert shorten("abc", 3) == "abc"
    assert shorten("abcd", 3) == "..."
    assert shorten("abcdef", 5) == "ab..."


def test_end_writes_the_summary_once_then_exits_with_the_code(tmp_path, monkeypatch, capsys):
    log = tmp_path / "termination-log"
    monkeypatch.setattr(summary, "TERMINATION_LOG", str(log))
    exits = []

    def exit_(code):
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(summary.os, "_exit", exit_)
    report = Report()
    report.phase = "lock"
    with pytest.raises(SystemExit):
        end(report, 6, "lock-lost", "lost the migration lock")
    assert exits == [6]
    data = json.loads(log.read_text())
    assert (data["exit_code"], data["result"], data["phase"]) == (6, "lock-lost", "lock")
    assert "django-migrate migrate [lock]: lost the migration lock" in capsys.readouterr().err
    # Without a result (the outer phase passing the inner phase's code on), nothing is written.
    log.unlink()
    with pytest.raises(SystemExit):
        end(report, 2)
    assert exits == [6, 2]
    assert not log.exists()
