"""Plan mode's report from a pending plan (docs/src/how-to/plan.md): what the settings do
with each migration, the rollout's verdict with its result and exit code, the data
migrations, and the report as a table."""

import pytest
from django.db import migrations, models
from django_migrate_step import classifier, contract, plan
from django_migrate_step.classifier import classify
from django_migrate_step.config import EXIT_OK, EXIT_UNSAFE
from django_migrate_step.contract import blocked_by_deferred, deferred_migrations
from django_migrate_step.plan_report import table
from django_migrate_step.summary import Report
from plans import APP, TABLE
from plans import plan as pending


@pytest.fixture
def sized(monkeypatch):
    monkeypatch.setattr(classifier, "table_size", lambda connection, table, report: (250000, 5 * 1024 * 1024))


def settings(monkeypatch, unsafe_migrations):
    for module in (classifier, contract, plan):
        monkeypatch.setattr(module, "UNSAFE_MIGRATIONS", unsafe_migrations)


def report_of(steps, connection, depends=False):
    """(entries, verdict) of a pending plan of `steps` (lists of operations), each
    migration depending on the one before it when `depends`."""
    planned = pending(*steps)
    if depends:
        for (before, _), (after, _) in zip(planned, planned[1:]):
            after.dependencies = [(APP, before.name)]
    unsafe, _ = classify(planned, False, connection, Report())
    deferred = deferred_migrations(planned, unsafe)
    entries = plan.migration_entries(planned, unsafe, deferred, blocked_by_deferred(planned, deferred))
    return entries, plan.verdict(entries, False)


INDEX = [migrations.AddIndex("Product", models.Index(fields=["name"], name="product_name_idx"))]
DROP = [migrations.RemoveField("Product", "note")]
BACKFILL = [migrations.RunPython(migrations.RunPython.noop), migrations.RunSQL("UPDATE shop_product SET views = 0")]


def test_deny_holds_the_rollout_back_on_a_breaking_migration(monkeypatch, postgresql, sized):
    settings(monkeypatch, "deny")
    entries, (verdict, result, code, message) = report_of([INDEX, DROP], postgresql)
    assert [e["action"] for e in entries] == ["apply", "hold-back"]
    assert (verdict, result, code) == ("held-back", "unsafe-blocked", EXIT_UNSAFE)
    assert "shop.0003_change" in message and "allow-unsafe" in message
    (lock,) = entries[0]["operations"][0]["findings"]
    assert (lock["kind"], lock["lock"], lock["table"], lock["rows"]) == ("locking", "SHARE", TABLE, 250000)
    assert lock["held_back"] is False  # hold-back holds back breaking ones only
    assert entries[1]["why"].startswith("drops column Product.note")


def test_warn_lets_the_rollout_pass_and_names_what_it_applies(monkeypatch, postgresql, sized):
    settings(monkeypatch, "warn")
    entries, (verdict, result, code, message) = report_of([INDEX, DROP], postgresql)
    assert [e["action"] for e in entries] == ["apply", "apply"]
    assert (verdict, result, code) == ("pass", "planned", EXIT_OK)
    assert "1 unsafe for the previous release, applied under warn: shop.0003_change RemoveField" in message
    assert "1 blocking traffic: shop.0002_change AddIndex" in message


def test_defer_defers_the_breaking_one_and_blocks_what_depends_on_it(monkeypatch, postgresql, sized):
    settings(monkeypatch, "defer")
    entries, (verdict, result, code, message) = report_of([DROP, INDEX], postgresql, depends=True)
    assert [e["action"] for e in entries] == ["defer", "block"]
    assert entries[1]["why"] == "must run after shop.0002_change, which is deferred to the contract run"
    assert (verdict, result, code) == ("blocked", "deferred-blocked", EXIT_UNSAFE)
    entries, (verdict, _, code, message) = report_of([INDEX, DROP], postgresql, depends=True)
    assert [e["action"] for e in entries] == ["apply", "defer"]
    assert (verdict, code) == ("pass", EXIT_OK)
    assert "1 deferred to the contract run (shop.0003_change)" in message


def test_data_migrations_are_listed_with_what_they_run(monkeypatch, postgresql):
    settings(monkeypatch, "warn")
    entries, (_, _, _, message) = report_of([BACKFILL], postgresql)
    ops = entries[0]["operations"]
    assert [o["data"] for o in ops] == [True, True]
    assert ops[0]["operation"] == "RunPython(django.db.migrations.operations.special.RunPython.noop)"
    assert ops[1]["operation"] == "RunSQL(UPDATE shop_product SET views = 0)"
    assert plan.counts(entries)["data"] == 2
    assert "2 data migration operation(s) to review by hand" in message


def test_nothing_pending_passes():
    assert plan.verdict([], False)[:3] == ("nothing-pending", "nothing-pending", EXIT_OK)


def test_the_table_names_every_migration_and_finding(monkeypatch, postgresql, sized):
    settings(monkeypatch, "deny")
    entries, (verdict, _, _, message) = report_of([INDEX, DROP, BACKFILL], postgresql)
    text = table(
        {
            "verdict": verdict,
            "message": message,
            "database": {"alias": "default", "server": "PostgreSQL", "version": "17.2"},
            "first_install": False,
            "settings": {
                "unsafe_migrations": "deny",
                "hold_back": ["breaking"],
                "locking_min_rows": 100000,
                "allow_unsafe": [],
                "defer": [],
            },
            "migrations": entries,
        }
    )
    assert text.startswith("PLAN  held-back: ")
    assert "DATABASE  PostgreSQL 17.2 (alias default)" in text
    rows = [line.split() for line in text.splitlines() if line.startswith("shop.")]
    assert [r[:2] for r in rows] == [
        ["shop.0002_change", "apply"],
        ["shop.0003_change", "hold-back"],
        ["shop.0004_change", "apply"],
    ]
    assert "locking: SHARE on shop_product (~250,000 rows, 5.0 MiB)" in text
    assert "breaking (held back): drops column Product.note" in text
    assert "DATA MIGRATIONS (cannot be checked; review by hand)" in text
