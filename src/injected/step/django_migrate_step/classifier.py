"""The classifier: which operations of the pending plan hurt the running service, of two
kinds: `breaking` (the previous release's code fails against the migrated database) and
`locking` (it holds a lock that blocks reads or writes for as long as it takes on an
existing table, sized from the database's statistics); and which findings `deny` holds
back. docs/src/reference/classifier.md lists its rules."""

import contextlib

from .columns import (
    db_table,
    field_type,
    mentions_default,
    no_default,
    no_default_given,
    old_field,
    related_model,
    rewrites_in_place,
    unique_rule_harmless,
    unique_sets,
    widens,
)
from .config import (
    ALLOW_UNSAFE,
    HOLD_BACK,
    KIND_BREAKING,
    KIND_LOCKING,
    LOCKING_MIN_ROWS,
    MODE,
    MODE_CONTRACT,
    UNSAFE_MIGRATIONS,
)
from .summary import first_line


def pending_plan(connection):
    """The pending plan as (migration, project state before it) pairs."""
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    first_install = not executor.loader.applied_migrations
    out = []
    for migration, backwards in plan:
        if backwards:
            continue
        state = executor.loader.project_state((migration.app_label, migration.name), at_end=False)
        out.append((migration, state))
    return out, first_install


def database_operations(operations):
    """The operations that touch the database: SeparateDatabaseAndState counts only its
    database side."""
    from django.db.migrations.operations import SeparateDatabaseAndState

    for op in operations:
        if isinstance(op, SeparateDatabaseAndState):
            yield from database_operations(op.database_operations)
        else:
            yield op


def breaks_previous_release(op, app_label, state, connection, later, added=frozenset()):
    """Why `op` breaks the release still serving (its model code against the migrated
    database), or None. `state` is the project state just before it; `later` the
    operations after it in the same migration; `added` the (app, model, field) of the
    columns the pending plan added before it, which the previous release never writes."""
    from django.db.migrations import operations as ops

    if isinstance(op, ops.RemoveField):
        return "drops column %s.%s, which the previous release still reads" % (op.model_name, op.name)
    if isinstance(op, ops.DeleteModel):
        return "drops the table of model %s, which the previous release still reads" % op.name
    if isinstance(op, ops.RenameField):
        old = old_field(state, app_label, op.model_name_lower, op.old_name)
        if old is not None and old.db_column:
            return None  # the column keeps its name: a rename in the code only
        return "renames column %s.%s to %s; the previous release still uses the old name" % (
            op.model_name,
            op.old_name,
            op.new_name,
        )
    if isinstance(op, ops.RenameModel):
        try:
            if state.models[app_label, op.old_name_lower].options.get("db_table"):
                return None  # the table keeps its name
        except KeyError:
            pass
        return "renames model %s to %s (and its table); the previous release still uses the old one" % (
            op.old_name,
            op.new_name,
        )
    if isinstance(op, ops.AlterModelTable):
        if (op.table or "%s_%s" % (app_label, op.name_lower)) == db_table(state, app_label, op.name_lower):
            return None  # the table keeps its name
        return "renames the table of model %s; the previous release still uses the old name" % op.name
    if isinstance(op, ops.AlterOrderWithRespectTo):
        if op.order_with_respect_to:
            return (
                "adds the non-nullable column %s._order without a database default; inserts of the previous "
                "release fail" % op.name
            )
        return "drops column %s._order, which the previous release still reads" % op.name
    if isinstance(op, ops.AddField):
        field = op.field
        if field.many_to_many or getattr(field, "generated", False):
            return None  # a new table, or a column the database computes
        if not field.null and no_default(field):
            table = db_table(state, app_label, op.model_name_lower)
            column = field.db_column or (op.name + "_id" if field.is_relation else op.name)
            if any(mentions_default(o, op.model_name_lower, op.name, table, column) for o in later):
                return None
            return "adds non-nullable column %s.%s without a database default; inserts of the previous release fail" % (
                op.model_name,
                op.name,
            )
        if field.unique and not field.null:
            return (
                "adds column %s.%s with a uniqueness rule and one database default: the previous release's "
                "second insert repeats that default and fails" % (op.model_name, op.name)
            )
        return None
    if isinstance(op, ops.AlterUniqueTogether):
        new = {tuple(sorted(t)) for t in (op.unique_together or ())}
        rules = [
            t
            for t in new - unique_sets(state, app_label, op.name_lower)
            if not unique_rule_harmless(t, app_label, op.name_lower, state, added)
        ]
        if rules:
            return (
                "adds the uniqueness rule %s on %s: inserts and updates of the previous release that repeat "
                "a value now fail" % (", ".join("(%s)" % ", ".join(t) for t in sorted(rules)), op.name)
            )
        return None
    if isinstance(op, ops.AddConstraint):
        from django.db.models import UniqueConstraint

        constraint = op.constraint
        if isinstance(constraint, UniqueConstraint):
            if not constraint.expressions and unique_rule_harmless(
                constraint.fields,
                app_label,
                op.model_name_lower,
                state,
                added,
                getattr(constraint, "nulls_distinct", None),
            ):
                return None
            return (
                "adds the uniqueness rule %s on %s: inserts and updates of the previous release that repeat "
                "a value now fail" % (constraint.name, op.model_name)
            )
        return "adds the constraint %s on %s: the previous release may write rows that break it" % (
            constraint.name,
            op.model_name,
        )
    if isinstance(op, ops.AlterField):
        old = old_field(state, app_label, op.model_name_lower, op.name)
        if old is None:
            return None
        new = op.field
        where = "%s.%s" % (op.model_name, op.name)
        if old.many_to_many or new.many_to_many:
            return None
        old_column = old.db_column or (op.name + "_id" if old.is_relation else op.name)
        new_column = new.db_column or (op.name + "_id" if new.is_relation else op.name)
        if old_column != new_column:
            return "renames column %s to %s; the previous release still uses %s" % (old_column, new_column, old_column)
        if old.null and not new.null:
            return "makes column %s non-nullable; the previous release may still write NULL" % where
        if not no_default(old) and no_default(new) and not new.null:
            return (
                "drops the database default of non-nullable column %s; inserts of the previous release "
                "rely on it" % where
            )
        if (
            new.unique
            and not old.unique
            and not new.primary_key
            and not unique_rule_harmless((op.name,), app_label, op.model_name_lower, state, added)
        ):
            return (
                "adds a uniqueness rule to column %s: inserts and updates of the previous release that repeat "
                "a value now fail" % where
            )
        if old.is_relation and new.is_relation and related_model(old) != related_model(new):
            return "points foreign key %s at another table; the previous release writes keys of the old one" % where
        old_type, new_type = field_type(old, connection, state), field_type(new, connection, state)
        if old_type != new_type and not widens(old_type, new_type):
            return "changes the type of column %s from %s to %s: values the previous release writes may not fit" % (
                where,
                old_type,
                new_type,
            )
    return None


# PostgreSQL's table locks, as its documentation names them, with what they block.
PG_SHARE = "SHARE (blocks writes)"
PG_SHARE_ROW_EXCLUSIVE = "SHARE ROW EXCLUSIVE (blocks writes)"
PG_ACCESS_EXCLUSIVE = "ACCESS EXCLUSIVE (blocks reads and writes)"
MYSQL_COPY = "ALGORITHM=COPY table copy (blocks writes)"
MYSQL_ROW_LOCKS = "row locks of every changed row (blocks writes to them)"


def blocks_traffic(op, app_label, state, connection):
    """[(lock, table, why)] for the locks `op` holds for as long as it takes on an
    existing table (an index build, a table rewrite, a validating constraint); brief
    metadata locks are not listed: the lock timeout bounds those."""
    from django.db.migrations import operations as ops

    vendor = connection.vendor
    if vendor not in ("postgresql", "mysql"):
        return []
    postgres = vendor == "postgresql"
    model = getattr(op, "model_name_lower", None) or getattr(op, "name_lower", None)
    table = db_table(state, app_label, model) if model else None
    found = []

    def lock(mode, why, on=None):
        found.append((mode, on or table, why))

    def copy(why):
        # MariaDB 11.2 and later copy a table online (LOCK=NONE: reads and writes go on
        # during the copy and are replayed at its end); only MySQL and older MariaDB block
        # writes for as long as the copy takes.
        if not (getattr(connection, "mysql_is_mariadb", False) and tuple(connection.mysql_version) >= (11, 2)):
            lock(MYSQL_COPY, why)

    if isinstance(op, ops.AddIndex):
        if postgres and op.__class__.__name__ != "AddIndexConcurrently":
            lock(PG_SHARE, "builds index %s without CONCURRENTLY" % op.index.name)
    elif isinstance(op, ops.AlterIndexTogether):
        if postgres and op.option_value:
            lock(PG_SHARE, "builds the index_together indexes without CONCURRENTLY")
    elif isinstance(op, ops.AlterUniqueTogether):
        added = {tuple(sorted(t)) for t in (op.unique_together or ())} - unique_sets(state, app_label, model)
        if postgres and added:
            lock(PG_ACCESS_EXCLUSIVE, "builds the unique index of a new unique_together and checks every row")
    elif isinstance(op, ops.AddConstraint):
        from django.db.models import CheckConstraint

        if not postgres and isinstance(op.constraint, CheckConstraint):
            copy("adds check constraint %s, which copies the table" % op.constraint.name)
        if postgres and op.__class__.__name__ != "AddConstraintNotValid":
            from django.db.models import UniqueConstraint

            c = op.constraint
            if isinstance(c, UniqueConstraint) and (c.condition is not None or c.expressions):
                lock(PG_SHARE, "builds the unique index %s without CONCURRENTLY" % c.name)
            elif isinstance(c, UniqueConstraint):
                lock(PG_ACCESS_EXCLUSIVE, "builds the unique index of constraint %s and checks every row" % c.name)
            else:
                lock(PG_ACCESS_EXCLUSIVE, "checks every row against constraint %s" % c.name)
    elif isinstance(op, ops.AddField):
        field = op.field
        if field.many_to_many:
            return found
        if field.is_relation and getattr(field, "db_constraint", True):
            target_app, _, target_model = related_model(field).rpartition(".")
            target_table = db_table(state, target_app or app_label, target_model)
            if postgres:
                # ADD COLUMN ... REFERENCES holds ACCESS EXCLUSIVE until the migration commits.
                lock(PG_ACCESS_EXCLUSIVE, "adds the foreign key %s, validates it and builds its index" % op.name)
                lock(PG_SHARE_ROW_EXCLUSIVE, "is referenced by the new foreign key %s" % op.name, target_table)
            else:
                copy("adds the foreign key %s, which copies the table" % op.name)
        if postgres and not field.null and no_default(field) and not no_default_given(field):
            lock(PG_ACCESS_EXCLUSIVE, "checks every row of the new NOT NULL column %s with DEFAULT NULL" % op.name)
        elif postgres and (field.unique or field.db_index) and not field.is_relation:
            # After ADD COLUMN, whose ACCESS EXCLUSIVE lasts until the migration commits.
            lock(PG_ACCESS_EXCLUSIVE, "builds an index on the new column %s" % op.name)
        if postgres and getattr(field, "generated", False) and getattr(field, "db_persist", False):
            lock(PG_ACCESS_EXCLUSIVE, "rewrites the table to compute the stored generated column %s" % op.name)
    elif isinstance(op, ops.AlterField):
        old = old_field(state, app_label, model, op.name)
        new = op.field
        if old is None or old.many_to_many or new.many_to_many:
            return found
        old_type, new_type = field_type(old, connection, state), field_type(new, connection, state)
        if old_type != new_type and not rewrites_in_place(old_type, new_type, vendor):
            if postgres:
                lock(
                    PG_ACCESS_EXCLUSIVE, "rewrites the table to change %s from %s to %s" % (op.name, old_type, new_type)
                )
            else:
                copy("copies the table to change %s from %s to %s" % (op.name, old_type, new_type))
        if postgres and old.null and not new.null:
            lock(PG_ACCESS_EXCLUSIVE, "checks every row for NULL to make %s non-nullable" % op.name)
        elif old.null and not new.null and new.has_default():
            # Django first sets the default on every NULL row, in one UPDATE.
            lock(MYSQL_ROW_LOCKS, "sets %s on every NULL row in one UPDATE to make it non-nullable" % op.name)
        if postgres and new.unique and not old.unique and not new.primary_key:
            lock(PG_ACCESS_EXCLUSIVE, "builds the unique index of %s and checks every row" % op.name)
        elif postgres and (new.db_index and not old.db_index) and not new.unique:
            lock(PG_SHARE, "builds an index on %s without CONCURRENTLY" % op.name)
        if new.is_relation and getattr(new, "db_constraint", True) and related_model(old) != related_model(new):
            if postgres:
                lock(PG_SHARE_ROW_EXCLUSIVE, "validates the foreign key %s on every row" % op.name)
            else:
                copy("adds the foreign key %s, which copies the table" % op.name)
    return found


def table_size(connection, table, report):
    """(rows, bytes) of `table` from the database's statistics (never by counting); None
    for what the statistics do not know. Inside a transaction (the plan's) a failed read
    is rolled back to a savepoint, so the transaction goes on."""
    from django.db import transaction

    guard = transaction.atomic(using=connection.alias) if connection.in_atomic_block else contextlib.nullcontext()
    try:
        with guard, connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                # The larger of the live rows the statistics system counts (reset to 0 by
                # pg_stat_reset, a crash or a failover) and the last ANALYZE's estimate.
                cursor.execute(
                    "SELECT NULLIF(GREATEST(COALESCE(s.n_live_tup, -1), c.reltuples::bigint), -1), "
                    "pg_total_relation_size(c.oid) "
                    "FROM pg_class c LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid "
                    "WHERE c.oid = to_regclass(%s)",
                    [connection.ops.quote_name(table)],
                )
                row = cursor.fetchone()
                if not row:
                    return None, None
                return (None if row[0] is None else int(row[0])), int(row[1])
            cursor.execute(
                "SELECT TABLE_ROWS, DATA_LENGTH + INDEX_LENGTH FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
                [table],
            )
            row = cursor.fetchone()
            return (int(row[0]), int(row[1])) if row and row[0] is not None else (None, None)
    except Exception as e:  # noqa: BLE001 - a size is information, not a condition
        report.log("cannot read the size of table %s: %s" % (table, first_line(e)))
        return None, None


def human_bytes(n):
    if n is None:
        return "unknown size"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0
    return "%d" % n


def classify(plan, first_install, connection, report):
    """Operations of the pending plan that hurt the running service, of two kinds:
    `breaking` (the previous release's code fails against the migrated database) and
    `locking` (it holds a lock that blocks reads or writes for as long as it takes), and
    the operations that cannot be checked. Operations on models created earlier in the
    same plan are neither: the previous release never used them and their tables are
    empty; nor is anything on a first install. An operation later in the same migration
    that gives a new column its database default clears the AddField before it."""
    from django.db.migrations import operations as ops

    unsafe, unchecked = [], []
    if first_install:
        return unsafe, unchecked
    created = set()
    # Columns the plan adds: the previous release never writes them.
    added = set()
    sizes = {}
    for migration, state in plan:
        name = "%s.%s" % (migration.app_label, migration.name)
        operations = list(database_operations(migration.operations))
        for i, op in enumerate(operations):
            if isinstance(op, ops.CreateModel):
                created.add((migration.app_label, op.name_lower))
            if isinstance(op, (ops.RunSQL, ops.RunPython)):
                unchecked.append({"migration": name, "operation": op.__class__.__name__})
                continue
            model = getattr(op, "model_name_lower", None) or getattr(op, "name_lower", None)
            if (migration.app_label, model) in created and not isinstance(op, ops.CreateModel):
                continue
            described = "%s(%s)" % (op.__class__.__name__, op.describe())
            why = breaks_previous_release(op, migration.app_label, state, connection, operations[i + 1 :], added)
            if why:
                unsafe.append(
                    {"migration": name, "operation": described, "kind": KIND_BREAKING, "why": why, "applied": False}
                )
            for mode, table, because in blocks_traffic(op, migration.app_label, state, connection):
                if table not in sizes:
                    sizes[table] = table_size(connection, table, report)
                rows, size = sizes[table]
                unsafe.append(
                    {
                        "migration": name,
                        "operation": described,
                        "kind": KIND_LOCKING,
                        "why": "holds %s on %s (%s rows, %s) while it %s"
                        % (mode, table, "unknown" if rows is None else "~%d" % rows, human_bytes(size), because),
                        "lock": mode.split(" (")[0],
                        "table": table,
                        "rows": rows,
                        "bytes": size,
                        "applied": False,
                    }
                )
            if isinstance(op, ops.AddField):
                added.add((migration.app_label, op.model_name_lower, op.name_lower))
            try:
                op.state_forwards(migration.app_label, state)
            except Exception:  # noqa: BLE001 - the state is only needed for the checks
                pass
    return unsafe, unchecked


def held_back(u):
    """True when `deny` holds this finding back: its kind is chosen by hold-back, it is
    not allowed by name, and a locking one is on a table of at least the size set. The
    contract run holds no breaking one back: no pod of the previous release is left."""
    if UNSAFE_MIGRATIONS != "deny" or u["migration"] in ALLOW_UNSAFE or u["kind"] not in HOLD_BACK:
        return False
    if MODE == MODE_CONTRACT and u["kind"] == KIND_BREAKING:
        return False
    return u["kind"] != KIND_LOCKING or u["rows"] is None or u["rows"] >= LOCKING_MIN_ROWS
