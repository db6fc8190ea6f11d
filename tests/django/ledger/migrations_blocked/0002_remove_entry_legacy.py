"""Marked to run once release 1 is gone."""

from django.db import migrations
from django_safemigrate import Safe


class Migration(migrations.Migration):
    safe = Safe.after_deploy()
    dependencies = [("ledger", "0001_initial")]

    operations = [migrations.RemoveField(model_name="entry", name="legacy")]
