"""Breaks release 1 while it serves: it still reads the column."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("ledger", "0001_initial")]

    operations = [migrations.RemoveField(model_name="entry", name="legacy")]
