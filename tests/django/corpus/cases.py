"""The operations the step's classifier is proven on: each case is the migration a team
ships (`change`) on top of a common previous release (`BASE`, plus `before`), applied to a
live database by the migrations tier, which then runs the previous release's model code
against it (corpus_probe.py). `breaking` is what that probe is expected to find; the
tier checks the classifier against the probe, and the probe against `breaking`, so
neither can pass by agreeing with a list alone.

A case's `seed` is how many rows the previous release left in the table (some migrations
cannot apply to a table with rows, which is the other half of the harm); `engines` limits
it to the backends it exists on.
"""

from django.db import migrations, models
from django.db.models import Q


def item_fields():
    return [
        ("id", models.BigAutoField(primary_key=True, serialize=False)),
        ("name", models.CharField(max_length=100)),
        ("code", models.CharField(max_length=20, null=True)),
        ("qty", models.IntegerField(default=0)),
        ("total", models.BigIntegerField(default=0)),
        ("note", models.TextField(null=True)),
        ("price", models.DecimalField(max_digits=8, decimal_places=2, null=True)),
        ("legacy", models.CharField(max_length=30, null=True)),
        ("flag", models.IntegerField(db_default=1)),
        ("category", models.ForeignKey("corpus.category", null=True, on_delete=models.SET_NULL)),
    ]


BASE = [
    migrations.CreateModel(
        "Category",
        [("id", models.BigAutoField(primary_key=True, serialize=False)), ("name", models.CharField(max_length=50))],
    ),
    migrations.CreateModel("Other", [("id", models.BigAutoField(primary_key=True, serialize=False))]),
    migrations.CreateModel("Item", item_fields()),
    migrations.AddIndex("item", models.Index(fields=["code"], name="corpus_item_code_idx")),
    migrations.AddConstraint("item", models.UniqueConstraint(fields=["legacy"], name="corpus_item_legacy_uniq")),
]


def case(change, breaking, before=(), seed=3, engines=("postgresql", "mysql")):
    return {"change": list(change), "breaking": breaking, "before": list(before), "seed": seed, "engines": engines}


CASES = {
    # Breaking: the previous release's code fails against the migrated database.
    "remove_field": case([migrations.RemoveField("item", "legacy")], True),
    "delete_model": case([migrations.DeleteModel("item")], True),
    "rename_field": case([migrations.RenameField("item", "note", "remark")], True),
    "rename_model": case([migrations.RenameModel("Item", "Article")], True),
    "alter_model_table": case([migrations.AlterModelTable("item", "corpus_items")], True),
    "add_field_python_default_only": case([migrations.AddField("item", "rank", models.IntegerField(default=0))], True),
    # MariaDB refuses DEFAULT NULL on a NOT NULL column outright.
    "add_field_db_default_none": case(
        [migrations.AddField("item", "rank", models.IntegerField(db_default=None))],
        True,
        seed=0,
        engines=("postgresql",),
    ),
    "add_field_unique_with_db_default": case(
        [migrations.AddField("item", "ref", models.CharField(max_length=10, db_default="x", unique=True))],
        True,
        seed=1,
    ),
    "alter_field_not_null": case(
        [migrations.AlterField("item", "code", models.CharField(max_length=20, default=""))], True
    ),
    "alter_field_shorter": case([migrations.AlterField("item", "name", models.CharField(max_length=50))], True),
    "alter_field_bigint_to_int": case([migrations.AlterField("item", "total", models.IntegerField(default=0))], True),
    "alter_field_text_to_int": case([migrations.AlterField("item", "code", models.IntegerField(null=True))], True),
    "alter_field_unique": case(
        [migrations.AlterField("item", "code", models.CharField(max_length=20, null=True, unique=True))], True
    ),
    "alter_field_one_to_one": case(
        [
            migrations.AlterField(
                "item", "category", models.OneToOneField("corpus.category", null=True, on_delete=models.SET_NULL)
            )
        ],
        True,
        seed=1,
    ),
    "alter_field_retarget_foreign_key": case(
        [
            migrations.AlterField(
                "item", "category", models.ForeignKey("corpus.other", null=True, on_delete=models.SET_NULL)
            )
        ],
        True,
        seed=0,
    ),
    "alter_field_drop_db_default": case([migrations.AlterField("item", "flag", models.IntegerField())], True),
    "alter_unique_together": case([migrations.AlterUniqueTogether("item", {("name", "code")})], True),
    "add_unique_constraint": case(
        [migrations.AddConstraint("item", models.UniqueConstraint(fields=["name"], name="corpus_item_name_uniq"))],
        True,
    ),
    "add_check_constraint": case(
        [migrations.AddConstraint("item", models.CheckConstraint(condition=Q(qty__gte=0), name="corpus_item_qty"))],
        True,
    ),
    "order_with_respect_to": case([migrations.AlterOrderWithRespectTo("item", "category")], True),
    # A partial unique index: PostgreSQL only (Django does not create it on MySQL/MariaDB).
    "add_unique_constraint_condition": case(
        [
            migrations.AddConstraint(
                "item",
                models.UniqueConstraint(fields=["name"], condition=Q(qty__gt=0), name="corpus_item_name_pos_uniq"),
            )
        ],
        True,
        engines=("postgresql",),
    ),
    # Safe for the previous release.
    # A wider rule replacing a narrower one: a repeat of (name, code) repeats name, which the
    # previous release's rule already refused.
    "alter_unique_together_weaker": case(
        [migrations.AlterUniqueTogether("item", {("name", "code")})],
        False,
        before=[migrations.AlterUniqueTogether("item", {("name",)})],
    ),
    "add_unique_constraint_weaker": case(
        [
            migrations.AddConstraint(
                "item", models.UniqueConstraint(fields=["legacy", "name"], name="corpus_item_legacy_name_uniq")
            )
        ],
        False,
    ),
    # A rule on a column the same migration adds: the previous release leaves it NULL.
    "add_field_then_unique_constraint": case(
        [
            migrations.AddField("item", "ref", models.CharField(max_length=10, null=True)),
            migrations.AddConstraint("item", models.UniqueConstraint(fields=["ref"], name="corpus_item_ref_uniq")),
        ],
        False,
    ),
    "add_field_nullable": case([migrations.AddField("item", "rank", models.IntegerField(null=True))], False),
    "add_field_db_default": case([migrations.AddField("item", "rank", models.IntegerField(db_default=0))], False),
    "add_field_then_set_default": case(
        [
            migrations.AddField("item", "rank", models.IntegerField(default=0)),
            migrations.RunSQL("ALTER TABLE corpus_item ALTER COLUMN rank SET DEFAULT 0", migrations.RunSQL.noop),
        ],
        False,
    ),
    "add_foreign_key_nullable": case(
        [migrations.AddField("item", "other", models.ForeignKey("corpus.other", null=True, on_delete=models.CASCADE))],
        False,
    ),
    "add_many_to_many": case([migrations.AddField("item", "tags", models.ManyToManyField("corpus.category"))], False),
    "add_index": case([migrations.AddIndex("item", models.Index(fields=["name"], name="corpus_item_name_idx"))], False),
    "remove_index": case([migrations.RemoveIndex("item", "corpus_item_code_idx")], False),
    "remove_constraint": case([migrations.RemoveConstraint("item", "corpus_item_legacy_uniq")], False),
    "alter_field_db_index": case(
        [migrations.AlterField("item", "qty", models.IntegerField(default=0, db_index=True))], False
    ),
    "alter_field_longer": case([migrations.AlterField("item", "name", models.CharField(max_length=200))], False),
    "alter_field_char_to_text": case([migrations.AlterField("item", "name", models.TextField())], False),
    "alter_field_int_to_bigint": case([migrations.AlterField("item", "qty", models.BigIntegerField(default=0))], False),
    "alter_field_more_digits": case(
        [migrations.AlterField("item", "price", models.DecimalField(max_digits=12, decimal_places=2, null=True))],
        False,
    ),
    "alter_field_nullable": case(
        [migrations.AlterField("item", "qty", models.IntegerField(default=0, null=True))], False
    ),
    # What makemigrations writes for a rename in the code only: the column keeps its name.
    "rename_field_code_only": case(
        [
            migrations.AlterField("item", "note", models.TextField(null=True, db_column="note")),
            migrations.RenameField("item", "note", "remark"),
        ],
        False,
    ),
    "rename_model_keeping_its_table": case(
        [migrations.AlterModelTable("item", "corpus_item"), migrations.RenameModel("Item", "Article")], False
    ),
    "state_only_remove_field": case(
        [migrations.SeparateDatabaseAndState(state_operations=[migrations.RemoveField("item", "legacy")])], False
    ),
}

# The cases whose locks are measured on MySQL/MariaDB too (there, with no transactional
# DDL, by timing a second connection's writes against a table of 100,000 rows): every
# kind of column, index, constraint and foreign key change.
MYSQL_LOCK_PROBE = {
    "add_field_nullable",
    "add_index",
    "alter_field_db_index",
    "add_foreign_key_nullable",
    "add_check_constraint",
    "alter_field_int_to_bigint",
    "alter_field_char_to_text",
    "alter_field_longer",
    "alter_field_more_digits",
    "alter_field_not_null",
    "alter_field_unique",
}


if __name__ == "__main__":
    import json

    print(
        json.dumps(
            {
                name: {
                    "breaking": c["breaking"],
                    "engines": list(c["engines"]),
                    "mysql_lock_probe": name in MYSQL_LOCK_PROBE,
                }
                for name, c in CASES.items()
            }
        )
    )
