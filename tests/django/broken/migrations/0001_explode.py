"""A migration that fails, to test how the migrate step reports it."""

from django.db import migrations


def explode(apps, schema_editor):
    raise RuntimeError("this migration fails on purpose")


class Migration(migrations.Migration):
    dependencies = [("catalog", "0003_backfill_slugs")]

    operations = [migrations.RunPython(explode, migrations.RunPython.noop)]
