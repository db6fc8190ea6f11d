"""Migrations as the step sees them, for the tests: the previous release's models (a
category, a supplier, products, an archive with a table name of its own) and a pending
plan of migrations after them."""

from django.db import migrations, models
from django.db.migrations.state import ProjectState

APP = "shop"
TABLE = "shop_product"


def check_constraint(condition, name):
    """A CheckConstraint in the form this Django takes (`condition=` from 5.1, `check=` before)."""
    try:
        return models.CheckConstraint(condition=condition, name=name)
    except TypeError:
        return models.CheckConstraint(check=condition, name=name)


def initial_state():
    """The previous release's models: a category and its products."""
    state = ProjectState()
    for op in [
        migrations.CreateModel(
            "Category",
            [("id", models.BigAutoField(primary_key=True)), ("title", models.CharField(max_length=50))],
        ),
        migrations.CreateModel(
            "Supplier",
            [("id", models.BigAutoField(primary_key=True))],
        ),
        migrations.CreateModel(
            "Product",
            [
                ("id", models.BigAutoField(primary_key=True)),
                ("name", models.CharField(max_length=100)),
                ("sku", models.CharField(max_length=20, unique=True)),
                ("legacy", models.CharField(max_length=20, db_column="legacy_code")),
                ("note", models.CharField(max_length=60, null=True)),
                ("stock", models.IntegerField(db_default=0)),
                ("price", models.DecimalField(max_digits=8, decimal_places=2)),
                ("views", models.BigIntegerField()),
                ("category", models.ForeignKey("shop.Category", models.CASCADE)),
            ],
        ),
        migrations.CreateModel(
            "Archive",
            [("id", models.BigAutoField(primary_key=True))],
            options={"db_table": "old_archive"},
        ),
    ]:
        op.state_forwards(APP, state)
    return state


class Migration(migrations.Migration):
    pass


def plan(*operations_by_migration):
    """A pending plan as pending_plan gives it: (migration, state before it) pairs, each
    state the one the migrations before it left."""
    state = initial_state()
    out = []
    for i, operations in enumerate(operations_by_migration, 1):
        migration = Migration("%04d_change" % (i + 1), APP)
        migration.operations = list(operations)
        out.append((migration, state.clone()))
        for op in operations:
            op.state_forwards(APP, state)
    return out
