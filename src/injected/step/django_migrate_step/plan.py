"""Plan mode: what this release's pending migrations would do to this database, before
the rollout. Every pending migration in plan order with its operations, each operation's
findings (both harm kinds, a locking one with its table's size from the statistics), what
the Deployment's settings would do with it (apply, hold back, defer to the contract run,
block the rollout) and a verdict for the rollout as a whole.

It writes nothing and takes no lock: the migration state, the plan and the tables' sizes
are read in one read-only transaction (PostgreSQL and MySQL/MariaDB refuse any write in
it), which is rolled back; no record table is created, the migration lock is never
tried, and no other pod is waited for. The report goes out three ways: the summary (its
counts never cut), a table in the log, and the whole report as one JSON line on stdout
(`{"django_migrate_plan": 1, ...}`), which `django-migrate-webhook plan` reads."""

import contextlib
import json
import sys

from .classifier import classify, database_operations, held_back, pending_plan
from .config import (
    ALIAS,
    ALLOW_UNSAFE,
    DEFER,
    EXIT_OK,
    EXIT_UNSAFE,
    HOLD_BACK,
    KIND_BREAKING,
    KIND_LOCKING,
    LOCK_TIMEOUT,
    LOCKING_MIN_ROWS,
    PHASE_DONE,
    RESULT_DEFERRED_BLOCKED,
    RESULT_LOCKING_BLOCKED,
    RESULT_NOTHING_PENDING,
    RESULT_PLANNED,
    RESULT_UNSAFE_BLOCKED,
    UNSAFE_MIGRATIONS,
)
from .contract import blocked_by_deferred, deferred_migrations
from .plan_report import table
from .summary import StepEnded, elapsed, name_list, shorten

# The version of the report's JSON; its first key, by which `plan` finds the line.
REPORT_VERSION = 1
REPORT_KEY = "django_migrate_plan"

ACTION_APPLY = "apply"
ACTION_HOLD_BACK = "hold-back"
ACTION_DEFER = "defer"
ACTION_BLOCK = "block"

VERDICT_PASS = "pass"
VERDICT_HELD_BACK = "held-back"
VERDICT_BLOCKED = "blocked"
VERDICT_NOTHING_PENDING = "nothing-pending"

# Longest SQL of a RunSQL operation the report quotes.
SQL_MAX_CHARS = 120


@contextlib.contextmanager
def read_only(connection):
    """One transaction that the server keeps read-only, rolled back at the end. A read
    that waits for a table lock (a migration of another pod holds it) gives up after the
    lock timeout instead of waiting for that migration."""
    from django.db import transaction

    with transaction.atomic(using=ALIAS):
        with connection.cursor() as cursor:
            if connection.vendor in ("postgresql", "oracle"):
                # The first statement of the transaction, as PostgreSQL requires.
                cursor.execute("SET TRANSACTION READ ONLY")
                if connection.vendor == "postgresql":
                    cursor.execute("SET LOCAL lock_timeout = '%ds'" % LOCK_TIMEOUT)
            elif connection.vendor == "mysql":
                # Session state of the step's own connection, which ends with the step.
                cursor.execute("SET SESSION lock_wait_timeout = %d" % LOCK_TIMEOUT)
                cursor.execute("START TRANSACTION READ ONLY")
            elif connection.vendor == "sqlite":
                cursor.execute("PRAGMA query_only = 1")
        try:
            yield
        finally:
            transaction.set_rollback(True, using=ALIAS)


def database_info(connection):
    """The server the plan was made against: vendor, product and version."""
    version = None
    if connection.vendor == "postgresql":
        number = getattr(connection, "pg_version", None)
        if number:
            version = "%d.%d" % (number // 10000, number % 10000)
    elif connection.vendor == "mysql":
        with contextlib.suppress(Exception):
            version = connection.mysql_server_info.split("-")[0]
    elif connection.vendor == "sqlite":
        import sqlite3

        version = sqlite3.sqlite_version
    return {
        "alias": ALIAS,
        "vendor": connection.vendor,
        "server": connection.display_name,
        "version": version,
    }


def described(op):
    """An operation as the report names it: the classifier's `Class(describe())`, and for
    the data migrations what they run."""
    from django.db.migrations import operations as ops

    if isinstance(op, ops.RunPython):
        code = getattr(op, "code", None)
        name = "%s.%s" % (
            getattr(code, "__module__", "?"),
            getattr(code, "__qualname__", getattr(code, "__name__", "?")),
        )
        return "RunPython(%s)" % name
    if isinstance(op, ops.RunSQL):
        sql = op.sql
        if isinstance(sql, (list, tuple)):
            sql = "; ".join(s if isinstance(s, str) else str(s[0]) for s in sql)
        return "RunSQL(%s)" % shorten(" ".join(str(sql).split()), SQL_MAX_CHARS)
    return "%s(%s)" % (op.__class__.__name__, op.describe())


def finding(u, deferred):
    """A classifier finding as the report gives it; `held_back` is what `deny` does with
    it, and a deferred migration holds nothing back (the contract run applies it)."""
    out = {
        "kind": u["kind"],
        "why": u["why"],
        "held_back": bool(u["migration"] not in deferred and held_back(u)),
        "allowed": u["migration"] in ALLOW_UNSAFE,
        "lock": u.get("lock"),
        "table": u.get("table"),
        "rows": u.get("rows"),
        "bytes": u.get("bytes"),
    }
    u["held_back"] = out["held_back"]
    return out


def migration_entries(plan, unsafe, deferred, blocked):
    """One entry per pending migration in plan order: its operations (the database side of
    SeparateDatabaseAndState), each with its findings, and what the settings do with it."""
    from django.db.migrations import operations as ops

    waits_for = dict(blocked)
    entries = []
    for migration, _state in plan:
        name = "%s.%s" % (migration.app_label, migration.name)
        found = [u for u in unsafe if u["migration"] == name]
        operations = []
        for op in database_operations(migration.operations):
            data = isinstance(op, (ops.RunPython, ops.RunSQL))
            text = described(op)
            classified = "%s(%s)" % (op.__class__.__name__, op.describe())
            mine = [u for u in found if u["operation"] == classified]
            found = [u for u in found if u["operation"] != classified]
            operations.append({"operation": text, "data": data, "findings": [finding(u, deferred) for u in mine]})
        held = [f for o in operations for f in o["findings"] if f["held_back"]]
        if name in deferred:
            action, why = ACTION_DEFER, deferred[name]["why"]
        elif name in waits_for:
            action, why = ACTION_BLOCK, "must run after %s, which is deferred to the contract run" % waits_for[name]
        elif held:
            action, why = ACTION_HOLD_BACK, held[0]["why"]
        else:
            action, why = ACTION_APPLY, None
        entries.append(
            {
                "migration": name,
                "action": action,
                "why": why,
                "atomic": bool(getattr(migration, "atomic", True)),
                "operations": operations,
            }
        )
    return entries


def counts(entries):
    findings = [f for e in entries for o in e["operations"] for f in o["findings"]]
    by_action = {
        a: sum(1 for e in entries if e["action"] == a)
        for a in (ACTION_APPLY, ACTION_HOLD_BACK, ACTION_DEFER, ACTION_BLOCK)
    }
    return {
        "pending": len(entries),
        "apply": by_action[ACTION_APPLY],
        "hold_back": by_action[ACTION_HOLD_BACK],
        "defer": by_action[ACTION_DEFER],
        "block": by_action[ACTION_BLOCK],
        "breaking": sum(1 for f in findings if f["kind"] == KIND_BREAKING),
        "locking": sum(1 for f in findings if f["kind"] == KIND_LOCKING),
        "data": sum(1 for e in entries for o in e["operations"] if o["data"]),
    }


def verdict(entries, first_install):
    """(verdict, result, exit code, message) of the rollout as a whole, as the migrate
    step would end it: a migration that must run after a deferred one blocks it, a
    held-back finding holds it back, and nothing is applied in either case."""
    c = counts(entries)
    blocked = [e for e in entries if e["action"] == ACTION_BLOCK]
    held = [e for e in entries if e["action"] == ACTION_HOLD_BACK]
    if not entries:
        return VERDICT_NOTHING_PENDING, RESULT_NOTHING_PENDING, EXIT_OK, "nothing pending: the rollout would pass"
    if blocked:
        first = blocked[0]
        return (
            VERDICT_BLOCKED,
            RESULT_DEFERRED_BLOCKED,
            EXIT_UNSAFE,
            "the rollout would be blocked, nothing applied: %d migration(s) must run after a deferred one; "
            "first: %s %s; defer it too (django-migrate.io/defer), or ship it in the next release"
            % (len(blocked), first["migration"], first["why"]),
        )
    if held:
        findings = [f for e in held for o in e["operations"] for f in o["findings"] if f["held_back"]]
        locking_only = all(f["kind"] == KIND_LOCKING for f in findings)
        first = held[0]
        return (
            VERDICT_HELD_BACK,
            RESULT_LOCKING_BLOCKED if locking_only else RESULT_UNSAFE_BLOCKED,
            EXIT_UNSAFE,
            "the rollout would be held back under django-migrate.io/unsafe-migrations: deny, nothing applied: "
            "%d operation(s) of %s; first: %s: %s; allow it with django-migrate.io/allow-unsafe: %s, or %s"
            % (
                len(findings),
                name_list(e["migration"] for e in held),
                first["migration"],
                first["why"],
                first["migration"],
                "ship it in a later release" if findings[0]["kind"] == KIND_BREAKING else "use a non-blocking form",
            ),
        )
    parts = ["%d would be applied" % c["apply"]]
    if c["defer"]:
        parts.append(
            "%d deferred to the contract run (%s)"
            % (c["defer"], name_list(e["migration"] for e in entries if e["action"] == ACTION_DEFER))
        )
    if first_install:
        parts.append("a first install: nothing serves yet, so nothing is unsafe")
    else:
        for kind, said in (
            (KIND_BREAKING, "unsafe for the previous release, applied under %s" % UNSAFE_MIGRATIONS),
            (KIND_LOCKING, "blocking traffic"),
        ):
            applied = [
                "%s %s" % (e["migration"], o["operation"])
                for e in entries
                if e["action"] == ACTION_APPLY
                for o in e["operations"]
                if any(f["kind"] == kind for f in o["findings"])
            ]
            if applied:
                parts.append("%d %s: %s" % (len(applied), said, name_list(applied)))
    if c["data"]:
        parts.append("%d data migration operation(s) to review by hand" % c["data"])
    return (
        VERDICT_PASS,
        RESULT_PLANNED,
        EXIT_OK,
        "the rollout would pass: %d pending; %s" % (c["pending"], "; ".join(parts)),
    )


def make_plan(connection, report):
    """The report of the pending plan, read in one read-only transaction."""
    with read_only(connection):
        plan, first_install = pending_plan(connection)
        unsafe, _unchecked = classify(plan, first_install, connection, report)
        deferred = deferred_migrations(plan, unsafe)
        blocked = blocked_by_deferred(plan, deferred)
        entries = migration_entries(plan, unsafe, deferred, blocked)
        database = database_info(connection)
    names = [e["migration"] for e in entries]
    report.pending = names
    report.unsafe_operations = unsafe
    report.deferred = [deferred[n] for n in names if n in deferred]
    plan_verdict, result, code, message = verdict(entries, first_install)
    return {
        REPORT_KEY: REPORT_VERSION,
        "verdict": plan_verdict,
        "message": message,
        "database": database,
        "first_install": first_install,
        "settings": {
            "unsafe_migrations": UNSAFE_MIGRATIONS,
            "hold_back": sorted(HOLD_BACK),
            "locking_min_rows": LOCKING_MIN_ROWS,
            "allow_unsafe": sorted(ALLOW_UNSAFE),
            "defer": sorted(DEFER),
        },
        "counts": counts(entries),
        "migrations": entries,
    }, StepEnded(code, result, message)


def step_plan(connection, report):
    """Plan mode, once the database is reachable: the report to stderr (a table) and stdout
    (JSON), the summary's plan; returns the step's end (exit 5 when the rollout would be
    held back or blocked)."""
    started = elapsed()
    plan, ended = make_plan(connection, report)
    report.plan = {"verdict": plan["verdict"], "counts": plan["counts"]}
    report.phase = PHASE_DONE
    sys.stderr.write(table(plan))
    sys.stderr.flush()
    sys.stdout.write(json.dumps(plan, separators=(",", ":")) + "\n")
    sys.stdout.flush()
    report.log("plan made in %.1fs, read-only" % (elapsed() - started))
    return ended
