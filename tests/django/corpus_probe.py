"""The previous release of a classifier corpus case (CORPUS_CASE, see corpus/cases.py)
against the database of the settings' env.

python corpus_probe.py prepare   applies the previous release (every app, corpus up to
                                 0001_before) and leaves the case's seed rows in the table
python corpus_probe.py locks     PostgreSQL: applies the case's migration in a transaction
                                 that it keeps open, and reports what a second connection
                                 sees meanwhile: whether an ordinary read and an ordinary
                                 write of the table wait for it, and whether the operation
                                 did work that grows with the table (rewrote it, built an
                                 index, scanned it); then rolls back; prints JSON
                                 MySQL/MariaDB: fills the table with 100,000 rows and
                                 applies the migration while a second connection writes
                                 and reads one row every 20 ms; reports the longest waits
python corpus_probe.py probe     runs the previous release's model code against the
                                 database as it is now: creates with every field (twice
                                 with the largest values, once with the smallest), creates
                                 with only the required fields (twice), updates, filters
                                 and reads; prints {action: error or null} as JSON
"""

import decimal
import json
import os
import sys

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testsite.settings")
django.setup()

from corpus.cases import CASES  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, models, transaction  # noqa: E402
from django.db.migrations.loader import MigrationLoader  # noqa: E402

CASE = CASES[os.environ["CORPUS_CASE"]]
BEFORE = ("corpus", "0001_before")


def previous_release():
    """The models as the previous release's code has them."""
    apps = MigrationLoader(connection).project_state(BEFORE).apps
    return apps.get_model("corpus", "Item"), apps.get_model("corpus", "Category")


def limits(field):
    """(largest, smallest) value the previous release may write to `field`."""
    if isinstance(field, models.BigIntegerField):
        return 2**62, -(2**62)
    if isinstance(field, models.SmallIntegerField):
        return 32767, -32768
    if isinstance(field, models.IntegerField):
        return 2**31 - 1, -(2**31)
    if isinstance(field, models.DecimalField):
        top = (
            decimal.Decimal(10 ** (field.max_digits - field.decimal_places))
            - decimal.Decimal(1) / 10**field.decimal_places
        )
        return top, -top
    if isinstance(field, models.CharField):
        return "m" * field.max_length, ""
    if isinstance(field, models.TextField):
        return "t" * 500, ""
    raise ValueError("no limits for %r" % field)


def kept_unique(item_model):
    """Fields under a uniqueness rule of the previous release itself: its code never
    repeats their values, so neither does the probe."""
    meta = item_model._meta
    names = {f.name for f in meta.concrete_fields if f.unique and not f.primary_key}
    for together in meta.unique_together:
        names.update(together)
    for constraint in meta.total_unique_constraints:
        names.update(constraint.fields)
    return names


SERIAL = iter(range(1, 10**6))


def values(item_model, category, which, required_only=False):
    """The values of one create: the largest (which=0) or smallest (1) of each field, made
    distinct where the previous release's own rules require it."""
    out = {}
    distinct = kept_unique(item_model)
    for field in item_model._meta.concrete_fields:
        if field.primary_key:
            continue
        optional = field.null or field.has_default() or field.has_db_default()
        if required_only and optional:
            continue
        if field.is_relation:
            out[field.name] = category
            continue
        value = limits(field)[which]
        if field.name in distinct:
            n = next(SERIAL)
            value = value[: max(0, len(value) - 7)] + "%07d" % n if isinstance(value, str) else value - n
        out[field.name] = value
    return out


def prepare():
    call_command("migrate", "corpus", BEFORE[1], verbosity=0)
    for app in ("catalog", "orders"):
        call_command("migrate", app, verbosity=0)
    item_model, category_model = previous_release()
    category = category_model.objects.create(name="seed")
    for i in range(CASE["seed"]):
        item_model.objects.create(name="seed-%d" % i, category=category)


def probe():
    item_model, category_model = previous_release()
    results = {}

    def attempt(action, work):
        try:
            with transaction.atomic():
                work()
            results[action] = None
        except Exception as e:  # noqa: BLE001 - every failure is a finding
            results[action] = "%s: %s" % (e.__class__.__name__, (str(e).strip().splitlines() or [""])[0][:300])

    state = {}

    def category():
        if "category" not in state:
            state["category"] = category_model.objects.create(name="probe")
        return state["category"]

    def create(which, required_only=False):
        row = item_model.objects.create(**values(item_model, category(), which, required_only))
        state.setdefault("rows", []).append(row.pk)

    attempt("category", category)
    attempt("create all fields, largest values", lambda: create(0))
    attempt("create all fields, largest values again", lambda: create(0))
    attempt("create all fields, smallest values", lambda: create(1))
    attempt("create required fields", lambda: create(0, True))
    attempt("create required fields again", lambda: create(0, True))

    def update():
        row = item_model.objects.order_by("pk").first()
        for name, value in values(item_model, category(), 0).items():
            setattr(row, name, value)
        row.save()

    attempt("update", update)
    attempt("filter", lambda: item_model.objects.filter(**values(item_model, category(), 0)).count())
    attempt("read", lambda: (list(item_model.objects.all()), list(item_model.objects.values())))
    print(json.dumps(results))


def table_facts(cursor, table):
    """(file node, indexes, sequential scans in this transaction) of `table`."""
    cursor.execute(
        "SELECT c.relfilenode, (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid), "
        "COALESCE((SELECT s.seq_scan FROM pg_stat_xact_all_tables s WHERE s.relid = c.oid), 0) "
        "FROM pg_class c WHERE c.oid = %s",
        [table],
    )
    return cursor.fetchone()


def waits(statement):
    """True when `statement`, on a connection of its own, waits for a lock (it gives up
    after 300 ms)."""
    from django.db import connections

    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SET lock_timeout = '300ms'")
            try:
                cursor.execute(statement)
            except Exception as e:  # noqa: BLE001 - only a lock wait is a finding
                if getattr(e.__cause__, "sqlstate", None) == "55P03":
                    return True
                raise
        return False
    finally:
        other.close()


def locks():
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    state = executor.loader.project_state(BEFORE)
    migration = executor.loader.get_migration("corpus", "0002_change")
    item = state.apps.get_model("corpus", "Item")
    report = {}
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('corpus_item')::oid")
        table = cursor.fetchone()[0]
        cursor.execute("SELECT id FROM corpus_item ORDER BY id LIMIT 1")
        row = (cursor.fetchone() or [0])[0]
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                before = table_facts(cursor, table)
                with connection.schema_editor(atomic=False) as editor:
                    migration.apply(state, editor)
                after = table_facts(cursor, table)
                cursor.execute(
                    "SELECT string_agg(mode, ',' ORDER BY mode) FROM pg_locks WHERE pid = pg_backend_pid() "
                    "AND relation = %s AND granted",
                    [table],
                )
                report["modes"] = cursor.fetchone()[0]
            report["read waits"] = waits("SELECT * FROM corpus_item WHERE id = %d" % row)
            report["write waits"] = waits("UPDATE corpus_item SET qty = qty WHERE id = %d" % row)
            report["rewrote"] = after is not None and after[0] != before[0]
            report["built an index"] = after is not None and after[1] > before[1]
            report["scanned"] = after is not None and after[2] > before[2]
            raise RuntimeError("roll back")
    except RuntimeError as e:
        if str(e) != "roll back":
            raise
    del item
    print(json.dumps(report))


def mysql_locks(rows=100_000):
    """MySQL/MariaDB (no transactional DDL): fills the table with `rows` rows, applies the
    case's migration while a second connection writes and reads one row every 20 ms, and
    reports the longest write and read and whether either waited for it (500 ms or more)."""
    import threading
    import time

    from django.db import connections

    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO corpus_item (name, qty, total, flag) SELECT CONCAT('bulk-', seq), 0, 0, 1 "
            "FROM seq_1_to_%d" % rows
        )
        cursor.execute("ANALYZE TABLE corpus_item")
        cursor.fetchall()
        cursor.execute("SELECT id FROM corpus_item ORDER BY id LIMIT 1")
        row = cursor.fetchone()[0]
    report = {}
    done = threading.Event()

    def migrate():
        started = time.monotonic()
        try:
            call_command("migrate", "corpus", "0002_change", verbosity=0)
        finally:
            report["seconds"] = round(time.monotonic() - started, 3)
            connections.close_all()
            done.set()

    worker = threading.Thread(target=migrate)
    longest = {"write": 0.0, "read": 0.0}
    with connection.cursor() as cursor:
        worker.start()
        while not done.is_set():
            for what, statement in (
                ("write", "UPDATE corpus_item SET qty = qty WHERE id = %d" % row),
                ("read", "SELECT qty FROM corpus_item WHERE id = %d" % row),
            ):
                started = time.monotonic()
                cursor.execute(statement)
                cursor.fetchall()
                longest[what] = max(longest[what], time.monotonic() - started)
            time.sleep(0.02)
    worker.join()
    report["longest write"] = round(longest["write"], 3)
    report["longest read"] = round(longest["read"], 3)
    report["write waits"] = longest["write"] >= 0.5
    report["read waits"] = longest["read"] >= 0.5
    print(json.dumps(report))


if __name__ == "__main__":
    {"prepare": prepare, "probe": probe, "locks": locks if connection.vendor == "postgresql" else mysql_locks}[
        sys.argv[1]
    ]()
