"""An index build on the big table: PostgreSQL blocks writes while it runs."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("shipping", "0001_initial")]

    operations = [
        migrations.AddIndex(model_name="shipment", index=models.Index(fields=["code"], name="shipping_code_idx")),
    ]
