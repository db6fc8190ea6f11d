"""Safe by itself, not deferred, but it depends on the deferred 0002."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("ledger", "0002_remove_entry_legacy")]

    operations = [
        migrations.AddField(model_name="entry", name="note", field=models.CharField(max_length=50, null=True))
    ]
