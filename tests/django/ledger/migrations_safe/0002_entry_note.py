"""Marked safe before the deploy."""

from django.db import migrations, models
from django_safemigrate import Safe


class Migration(migrations.Migration):
    safe = Safe.before_deploy()
    dependencies = [("ledger", "0001_initial")]

    operations = [
        migrations.AddField(model_name="entry", name="note", field=models.CharField(max_length=50, null=True))
    ]
