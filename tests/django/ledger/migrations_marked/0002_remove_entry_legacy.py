"""Marked to run once release 1 is gone, five minutes after the rollout at the earliest."""

from datetime import timedelta

from django.db import migrations
from django_safemigrate import Safe


class Migration(migrations.Migration):
    safe = Safe.after_deploy(delay=timedelta(minutes=5))
    dependencies = [("ledger", "0001_initial")]

    operations = [migrations.RemoveField(model_name="entry", name="legacy")]
