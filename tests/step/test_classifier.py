"""The classifier's rules (docs/src/reference/classifier.md) on Django's own operation
objects, both kinds of harm: `breaking` (breaks_previous_release) and `locking`
(blocks_traffic), per database; the plan-level rules of `classify` and what `deny`
holds back; the rules of column type changes."""

import pytest
from django.db import migrations, models
from django_migrate_step import classifier, columns
from django_migrate_step.classifier import (
    MYSQL_COPY,
    MYSQL_ROW_LOCKS,
    PG_ACCESS_EXCLUSIVE,
    PG_SHARE,
    PG_SHARE_ROW_EXCLUSIVE,
    blocks_traffic,
    breaks_previous_release,
    classify,
    held_back,
)
from django_migrate_step.summary import Report
from plans import APP, TABLE, check_constraint, initial_state, plan


def breaks(op, connection, later=(), added=frozenset()):
    return breaks_previous_release(op, APP, initial_state(), connection, list(later), added)


def locks(op, connection):
    """The lock modes `op` holds, with the table each is on."""
    return [(mode, table) for mode, table, _why in blocks_traffic(op, APP, initial_state(), connection)]


# ---------------------------------------------------------------- breaking


def test_dropping_a_column_or_a_table_breaks_the_previous_release(postgresql):
    assert "drops column Product.note" in breaks(migrations.RemoveField("Product", "note"), postgresql)
    assert "drops the table of model Category" in breaks(migrations.DeleteModel("Category"), postgresql)


def test_renames_break_unless_the_database_name_stays(postgresql):
    assert "renames column Product.name to title" in breaks(
        migrations.RenameField("Product", "name", "title"), postgresql
    )
    # The field has a db_column: a rename in the code only.
    assert breaks(migrations.RenameField("Product", "legacy", "old"), postgresql) is None
    assert "renames model Product to Item" in breaks(migrations.RenameModel("Product", "Item"), postgresql)
    assert breaks(migrations.RenameModel("Archive", "Store"), postgresql) is None
    assert "renames the table" in breaks(migrations.AlterModelTable("Product", "products"), postgresql)
    assert breaks(migrations.AlterModelTable("Product", TABLE), postgresql) is None
    moved = migrations.AlterField("Product", "legacy", models.CharField(max_length=20, db_column="code"))
    assert "renames column legacy_code to code" in breaks(moved, postgresql)


def test_a_new_non_nullable_column_breaks_without_a_database_default(postgresql):
    python_default = migrations.AddField("Product", "color", models.CharField(max_length=10, default="red"))
    assert "adds non-nullable column Product.color without a database default" in breaks(python_default, postgresql)
    default_null = migrations.AddField("Product", "size", models.IntegerField(db_default=None))
    assert "without a database default" in breaks(default_null, postgresql)
    assert breaks(migrations.AddField("Product", "size", models.IntegerField(db_default=1)), postgresql) is None
    assert breaks(migrations.AddField("Product", "size", models.IntegerField(null=True)), postgresql) is None
    assert breaks(migrations.AddField("Product", "tags", models.ManyToManyField("shop.Category")), postgresql) is None


def test_a_default_set_later_in_the_same_migration_clears_a_new_column(postgresql):
    added = migrations.AddField("Product", "color", models.CharField(max_length=10, default="red"))
    set_default = migrations.RunSQL("ALTER TABLE shop_product ALTER COLUMN color SET DEFAULT 'red'")
    assert breaks(added, postgresql, later=[set_default]) is None
    db_default = migrations.AlterField("Product", "color", models.CharField(max_length=10, db_default="red"))
    assert breaks(added, postgresql, later=[db_default]) is None
    # A default for another column clears nothing.
    other = migrations.RunSQL("ALTER TABLE shop_product ALTER COLUMN name SET DEFAULT 'x'")
    assert breaks(added, postgresql, later=[other]) is not None


def test_a_new_unique_column_with_one_database_default_breaks(postgresql):
    op = migrations.AddField("Product", "slug", models.CharField(max_length=10, unique=True, db_default="x"))
    assert "uniqueness rule and one database default" in breaks(op, postgresql)


def test_making_a_column_non_nullable_breaks_and_locks(postgresql, mysql):
    op = migrations.AlterField("Product", "note", models.CharField(max_length=60, default=""))
    assert "makes column Product.note non-nullable" in breaks(op, postgresql)
    assert locks(op, postgresql) == [(PG_ACCESS_EXCLUSIVE, TABLE)]
    # MySQL/MariaDB backfill the default into every NULL row in one UPDATE.
    assert locks(op, mysql) == [(MYSQL_ROW_LOCKS, TABLE)]


def test_dropping_the_database_default_of_a_non_nullable_column_breaks(postgresql):
    op = migrations.AlterField("Product", "stock", models.IntegerField())
    assert "drops the database default of non-nullable column Product.stock" in breaks(op, postgresql)


def test_uniqueness_rules_break_and_lock_on_postgresql(postgresql, mysql):
    unique = migrations.AlterField("Product", "name", models.CharField(max_length=100, unique=True))
    assert "adds a uniqueness rule to column Product.name" in breaks(unique, postgresql)
    assert locks(unique, postgresql) == [(PG_ACCESS_EXCLUSIVE, TABLE)]
    assert locks(unique, mysql) == []

    together = migrations.AlterUniqueTogether("Product", {("name", "price")})
    assert "adds the uniqueness rule (name, price) on Product" in breaks(together, postgresql)
    assert locks(together, postgresql) == [(PG_ACCESS_EXCLUSIVE, TABLE)]

    constraint = migrations.AddConstraint("Product", models.UniqueConstraint(fields=["name"], name="uniq_name"))
    assert "adds the uniqueness rule uniq_name" in breaks(constraint, postgresql)
    assert locks(constraint, postgresql) == [(PG_ACCESS_EXCLUSIVE, TABLE)]

    partial = models.UniqueConstraint(fields=["name"], condition=models.Q(stock__gt=0), name="uniq_in_stock")
    partial_op = migrations.AddConstraint("Product", partial)
    assert "adds the uniqueness rule uniq_in_stock" in breaks(partial_op, postgresql)
    assert locks(partial_op, postgresql) == [(PG_SHARE, TABLE)]


def test_a_foreign_key_made_one_to_one_adds_a_uniqueness_rule(postgresql):
    op = migrations.AlterField("Product", "category", models.OneToOneField("shop.Category", models.CASCADE))
    assert "adds a uniqueness rule to column Product.category" in breaks(op, postgresql)


def test_uniqueness_rules_that_no_write_of_the_previous_release_can_fail(postgresql):
    # Wider than a rule the model has: a repeat of (sku, name) repeats sku, which already fails.
    wider = migrations.AlterUniqueTogether("Product", {("name", "sku")})
    assert breaks(wider, postgresql) is None
    # On a nullable column the plan added: the previous release leaves it NULL.
    added = frozenset({(APP, "product", "note")})
    on_new = migrations.AddConstraint("Product", models.UniqueConstraint(fields=["note"], name="uniq_note"))
    assert breaks(on_new, postgresql, added=added) is None
    # ... unless its NULLs are not distinct.
    if hasattr(models.UniqueConstraint(fields=["note"], name="n"), "nulls_distinct"):
        not_distinct = migrations.AddConstraint(
            "Product", models.UniqueConstraint(fields=["note"], name="uniq_note", nulls_distinct=False)
        )
        assert breaks(not_distinct, postgresql, added=added) is not None
    # Removing a set is no rule at all.
    assert breaks(migrations.AlterUniqueTogether("Product", set()), postgresql) is None


def test_a_check_constraint_breaks_and_locks_on_both_databases(postgresql, mysql):
    op = migrations.AddConstraint("Product", check_constraint(models.Q(stock__gte=0), "stock_positive"))
    assert "adds the constraint stock_positive on Product" in breaks(op, postgresql)
    assert locks(op, postgresql) == [(PG_ACCESS_EXCLUSIVE, TABLE)]
    assert locks(op, mysql) == [(MYSQL_COPY, TABLE)]


def test_narrowing_or_changing_a_type_breaks_and_rewrites_the_table(postgresql, mysql):
    shorter = migrations.AlterField("Product", "name", models.CharField(max_length=50))
    assert "changes the type of column Product.name from varchar(100) to varchar(50)" in breaks(shorter, postgresql)
    assert locks(shorter, postgresql) == [(PG_ACCESS_EXCLUSIVE, TABLE)]
    assert locks(shorter, mysql) == [(MYSQL_COPY, TABLE)]
    smaller = migrations.AlterField("Product", "views", models.IntegerField())
    assert "from bigint to integer" in breaks(smaller, postgresql)
    other_type = migrations.AlterField("Product", "name", models.IntegerField())
    assert "changes the type of column Product.name" in breaks(other_type, postgresql)


def test_pointing_a_foreign_key_at_another_table_breaks_and_validates_every_row(postgresql, mysql):
    op = migrations.AlterField("Product", "category", models.ForeignKey("shop.Supplier", models.CASCADE))
    assert "points foreign key Product.category at another table" in breaks(op, postgresql)
    assert locks(op, postgresql) == [(PG_SHARE_ROW_EXCLUSIVE, TABLE)]
    assert locks(op, mysql) == [(MYSQL_COPY, TABLE)]


def test_order_with_respect_to_adds_or_drops_the_order_column(postgresql):
    assert "adds the non-nullable column Product._order" in breaks(
        migrations.AlterOrderWithRespectTo("Product", "category"), postgresql
    )
    assert "drops column Product._order" in breaks(migrations.AlterOrderWithRespectTo("Product", None), postgresql)


def test_widening_a_type_does_not_break_and_locks_only_where_the_database_rewrites(postgresql, mysql):
    longer = migrations.AlterField("Product", "name", models.CharField(max_length=200))
    assert breaks(longer, postgresql) is None
    assert locks(longer, postgresql) == []
    # MySQL/MariaDB extend a varchar in place while its length takes the same number of
    # bytes (up to 255 bytes, or above, at 4 bytes a character), else they copy the table.
    assert locks(longer, mysql) == []
    within = migrations.AlterField("Product", "sku", models.CharField(max_length=60, unique=True))
    assert locks(within, mysql) == []
    across = migrations.AlterField("Category", "title", models.CharField(max_length=100))
    assert breaks(across, postgresql) is None
    assert locks(across, mysql) == [(MYSQL_COPY, "shop_category")]

    text = migrations.AlterField("Product", "name", models.TextField())
    assert breaks(text, postgresql) is None
    assert locks(text, postgresql) == []

    bigger = migrations.AlterField("Product", "stock", models.BigIntegerField(db_default=0))
    assert breaks(bigger, postgresql) is None
    assert locks(bigger, postgresql) == [(PG_ACCESS_EXCLUSIVE, TABLE)]

    digits = migrations.AlterField("Product", "price", models.DecimalField(max_digits=12, decimal_places=2))
    assert breaks(digits, postgresql) is None
    assert locks(digits, postgresql) == []


def test_mariadb_11_2_and_later_copy_a_table_online(mysql, mariadb_11):
    # ALGORITHM=COPY with LOCK=NONE since MariaDB 11.2: reads and writes go on during the copy.
    across = migrations.AlterField("Category", "title", models.CharField(max_length=100))
    assert locks(across, mysql) == [(MYSQL_COPY, "shop_category")]
    assert locks(across, mariadb_11) == []
    check = migrations.AddConstraint("Product", check_constraint(models.Q(stock__gte=0), "stock_positive"))
    assert locks(check, mysql) == [(MYSQL_COPY, TABLE)]
    assert locks(check, mariadb_11) == []
    # What does not copy the table is unchanged: the NULL backfill row-locks every row.
    not_null = migrations.AlterField("Product", "note", models.CharField(max_length=60, default="-"))
    assert locks(not_null, mariadb_11) == locks(not_null, mysql) != []


# ---------------------------------------------------------------- locking only


def test_index_builds_lock_writes_on_postgresql_only(postgresql, mysql):
    add_index = migrations.AddIndex("Product", models.Index(fields=["name"], name="product_name"))
    assert breaks(add_index, postgresql) is None
    assert locks(add_index, postgresql) == [(PG_SHARE, TABLE)]
    assert locks(add_index, mysql) == []
    db_index = migrations.AlterField("Product", "name", models.CharField(max_length=100, db_index=True))
    assert locks(db_index, postgresql) == [(PG_SHARE, TABLE)]
    if hasattr(migrations, "AlterIndexTogether"):
        together = migrations.AlterIndexTogether("Product", {("name", "price")})
        assert locks(together, postgresql) == [(PG_SHARE, TABLE)]


def test_an_index_built_concurrently_takes_no_lock(postgresql):
    from django.contrib.postgres.operations import AddIndexConcurrently

    op = AddIndexConcurrently("Product", models.Index(fields=["name"], name="product_name"))
    assert locks(op, postgresql) == []


def test_a_new_foreign_key_locks_its_table_and_the_referenced_one(postgresql, mysql):
    op = migrations.AddField("Product", "supplier", models.ForeignKey("shop.Supplier", models.CASCADE, null=True))
    assert breaks(op, postgresql) is None
    assert locks(op, postgresql) == [(PG_ACCESS_EXCLUSIVE, TABLE), (PG_SHARE_ROW_EXCLUSIVE, "shop_supplier")]
    assert locks(op, mysql) == [(MYSQL_COPY, TABLE)]
    without_constraint = migrations.AddField(
        "Product", "supplier", models.ForeignKey("shop.Supplier", models.CASCADE, null=True, db_constraint=False)
    )
    assert locks(without_constraint, postgresql) == []


def test_a_new_not_null_column_with_default_null_is_checked_row_by_row_on_postgresql(postgresql):
    op = migrations.AddField("Product", "size", models.IntegerField(db_default=None))
    assert locks(op, postgresql) == [(PG_ACCESS_EXCLUSIVE, TABLE)]


# ---------------------------------------------------------------- neither


@pytest.mark.parametrize(
    "op",
    [
        migrations.AddField("Product", "color", models.CharField(max_length=10, null=True)),
        migrations.AddField("Product", "color", models.CharField(max_length=10, db_default="red")),
        migrations.AddField("Product", "tags", models.ManyToManyField("shop.Category")),
        migrations.RemoveIndex("Product", "product_name"),
        migrations.RemoveConstraint("Product", "stock_positive"),
        migrations.AlterUniqueTogether("Product", set()),
        migrations.AlterModelOptions("Product", {"ordering": ["name"]}),
        migrations.RenameField("Product", "legacy", "old"),
    ],
    ids=lambda op: op.__class__.__name__,
)
def test_operations_that_neither_break_nor_lock(op, postgresql, mysql):
    assert breaks(op, postgresql) is None
    assert locks(op, postgresql) == []
    assert locks(op, mysql) == []


def test_sqlite_is_never_called_locking():
    from django.db import connection

    assert connection.vendor == "sqlite"
    op = migrations.AddIndex("Product", models.Index(fields=["name"], name="product_name"))
    assert locks(op, connection) == []


# ---------------------------------------------------------------- classify


@pytest.fixture
def sized(monkeypatch):
    """Tables as the database's statistics would size them."""
    sizes = {TABLE: (250000, 5 * 1024 * 1024)}
    monkeypatch.setattr(classifier, "table_size", lambda connection, table, report: sizes.get(table, (None, None)))
    return sizes


def test_classify_names_both_kinds_with_the_table_they_lock(postgresql, sized):
    op = migrations.AddConstraint("Product", check_constraint(models.Q(stock__gte=0), "stock_positive"))
    unsafe, unchecked = classify(plan([op]), False, postgresql, Report())
    assert unchecked == []
    assert [u["kind"] for u in unsafe] == ["breaking", "locking"]
    breaking, locking = unsafe
    assert breaking["migration"] == "shop.0002_change"
    assert breaking["operation"].startswith("AddConstraint(")
    assert locking["lock"] == "ACCESS EXCLUSIVE"
    assert (locking["table"], locking["rows"], locking["bytes"]) == (TABLE, 250000, 5 * 1024 * 1024)
    assert "on shop_product (~250000 rows, 5.0 MiB)" in locking["why"]
    assert all(u["applied"] is False for u in unsafe)


def test_classify_finds_nothing_on_a_first_install(postgresql, sized):
    unsafe, unchecked = classify(plan([migrations.RemoveField("Product", "note")]), True, postgresql, Report())
    assert (unsafe, unchecked) == ([], [])


def test_classify_skips_models_the_plan_creates_and_lists_what_it_cannot_check(postgresql, sized):
    created = migrations.CreateModel("Coupon", [("id", models.BigAutoField(primary_key=True))])
    later = migrations.AddField("Coupon", "code", models.CharField(max_length=10, default="x"))
    run_python = migrations.RunPython(migrations.RunPython.noop)
    unsafe, unchecked = classify(plan([created], [later, run_python]), False, postgresql, Report())
    assert unsafe == []
    assert unchecked == [{"migration": "shop.0003_change", "operation": "RunPython"}]


def test_classify_counts_only_the_database_side_of_separate_database_and_state(postgresql, sized):
    forget = migrations.SeparateDatabaseAndState(state_operations=[migrations.RemoveField("Product", "note")])
    assert classify(plan([forget]), False, postgresql, Report()) == ([], [])
    drop = migrations.SeparateDatabaseAndState(database_operations=[migrations.RemoveField("Product", "note")])
    assert [u["kind"] for u in classify(plan([drop]), False, postgresql, Report())[0]] == ["breaking"]


def test_a_rule_on_a_nullable_column_the_plan_added_earlier_is_harmless(postgresql, sized):
    add = migrations.AddField("Product", "ean", models.CharField(max_length=13, null=True))
    rule = migrations.AddConstraint("Product", models.UniqueConstraint(fields=["ean"], name="uniq_ean"))
    kinds = [u["kind"] for u in classify(plan([add], [rule]), False, postgresql, Report())[0]]
    assert "breaking" not in kinds


@pytest.mark.parametrize(
    "settings, finding, held",
    [
        ({"UNSAFE_MIGRATIONS": "warn"}, {"kind": "breaking"}, False),
        ({"UNSAFE_MIGRATIONS": "deny"}, {"kind": "breaking"}, True),
        ({"UNSAFE_MIGRATIONS": "defer"}, {"kind": "breaking"}, False),
        ({"UNSAFE_MIGRATIONS": "deny", "ALLOW_UNSAFE": {"shop.0002_change"}}, {"kind": "breaking"}, False),
        ({"UNSAFE_MIGRATIONS": "deny", "MODE": "contract"}, {"kind": "breaking"}, False),
        ({"UNSAFE_MIGRATIONS": "deny"}, {"kind": "locking", "rows": 10**6}, False),
        ({"UNSAFE_MIGRATIONS": "deny", "HOLD_BACK": {"locking"}}, {"kind": "locking", "rows": 10**6}, True),
        ({"UNSAFE_MIGRATIONS": "deny", "HOLD_BACK": {"locking"}}, {"kind": "locking", "rows": 99999}, False),
        ({"UNSAFE_MIGRATIONS": "deny", "HOLD_BACK": {"locking"}}, {"kind": "locking", "rows": 100000}, True),
        ({"UNSAFE_MIGRATIONS": "deny", "HOLD_BACK": {"locking"}}, {"kind": "locking", "rows": None}, True),
        ({"UNSAFE_MIGRATIONS": "deny", "HOLD_BACK": {"locking"}, "MODE": "contract"}, {"kind": "locking"}, True),
        ({"UNSAFE_MIGRATIONS": "deny", "HOLD_BACK": {"locking"}}, {"kind": "breaking"}, False),
    ],
)
def test_what_deny_holds_back(monkeypatch, settings, finding, held):
    for name, value in settings.items():
        monkeypatch.setattr(classifier, name, value)
    finding = dict({"migration": "shop.0002_change", "rows": None}, **finding)
    assert held_back(finding) is held


# ---------------------------------------------------------------- type rules


@pytest.mark.parametrize(
    "db_type, parsed",
    [
        ("varchar(200)", ("varchar", (200,), True)),
        ("numeric(8, 2)", ("numeric", (8, 2), True)),
        ("integer UNSIGNED AUTO_INCREMENT", ("integer", None, False)),
        ("bigint", ("bigint", None, True)),
        (None, ("", None, True)),
    ],
)
def test_parse_type(db_type, parsed):
    assert columns.parse_type(db_type) == parsed


@pytest.mark.parametrize(
    "old, new, widened",
    [
        ("varchar(100)", "varchar(200)", True),
        ("varchar(100)", "varchar(100)", True),
        ("varchar(100)", "varchar(50)", False),
        ("varchar(100)", "text", True),
        ("varchar(100)", "longtext", True),
        ("text", "varchar(100)", False),
        ("smallint", "integer", True),
        ("integer", "bigint", True),
        ("bigint", "integer", False),
        ("integer", "integer UNSIGNED", False),
        ("integer UNSIGNED", "bigint", True),
        ("numeric(8, 2)", "numeric(12, 2)", True),
        ("numeric(8, 2)", "numeric(12, 3)", False),
        ("numeric(8, 2)", "numeric(6, 2)", False),
        ("integer", "varchar(20)", False),
    ],
)
def test_which_type_changes_widen(old, new, widened):
    assert columns.widens(old, new) is widened


@pytest.mark.parametrize(
    "old, new, vendor, in_place",
    [
        ("varchar(100)", "varchar(200)", "postgresql", True),
        ("varchar(100)", "text", "postgresql", True),
        ("numeric(8, 2)", "numeric(12, 2)", "postgresql", True),
        ("numeric(8, 2)", "numeric(12, 4)", "postgresql", False),
        ("integer", "bigint", "postgresql", False),
        ("varchar(100)", "varchar(50)", "postgresql", False),
        ("varchar(20)", "varchar(60)", "mysql", True),
        ("varchar(64)", "varchar(200)", "mysql", True),
        ("varchar(60)", "varchar(64)", "mysql", False),
        ("varchar(100)", "longtext", "mysql", False),
        ("numeric(8, 2)", "numeric(12, 2)", "mysql", False),
    ],
)
def test_which_type_changes_rewrite_the_table(old, new, vendor, in_place):
    assert columns.rewrites_in_place(old, new, vendor) is in_place


def test_a_foreign_keys_column_type_is_its_targets_primary_key(postgresql):
    state = initial_state()
    field = state.models[APP, "product"].fields["category"]
    assert columns.field_type(field, postgresql, state) == "bigint"
    dangling = models.ForeignKey("elsewhere.Thing", models.CASCADE)
    assert columns.field_type(dangling, postgresql, state) == "relation to elsewhere.thing"


def test_database_defaults():
    assert columns.no_default(models.IntegerField(default=1))
    assert columns.no_default(models.IntegerField(db_default=None))
    assert not columns.no_default(models.IntegerField(db_default=1))
    assert columns.no_default_given(models.IntegerField(default=1))
    assert not columns.no_default_given(models.IntegerField(db_default=None))
