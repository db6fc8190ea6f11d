"""Marked safe at any time; the uncalled classmethod means the same."""

from django.db import migrations, models
from django_safemigrate import Safe


class Migration(migrations.Migration):
    safe = Safe.always
    dependencies = [("ledger", "0002_entry_note")]

    operations = [
        migrations.AddField(model_name="entry", name="tag", field=models.CharField(max_length=10, null=True)),
    ]
