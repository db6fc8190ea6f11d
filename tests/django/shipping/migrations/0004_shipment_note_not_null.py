"""Makes the note non-nullable: the previous release may still write NULL, and every row
is checked (PostgreSQL) or updated (MariaDB) under a lock."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("shipping", "0003_fill_note")]

    operations = [
        migrations.AlterField(model_name="shipment", name="note", field=models.CharField(max_length=50, default="")),
    ]
