"""A migration that creates a table, then fails: MySQL and MariaDB cannot roll the
CREATE TABLE back, so it stays (half-applied); PostgreSQL rolls the whole migration back."""

from django.db import migrations, models


def fail(apps, schema_editor):
    raise RuntimeError("the second operation fails on purpose")


class Migration(migrations.Migration):
    initial = True
    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Thing",
            fields=[("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False))],
        ),
        migrations.RunPython(fail, migrations.RunPython.noop),
    ]
