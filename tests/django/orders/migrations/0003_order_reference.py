from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("orders", "0002_order_note"), ("catalog", "0003_backfill_slugs")]

    operations = [
        migrations.AddField(
            model_name="order",
            name="reference",
            field=models.CharField(blank=True, default="", max_length=32),
        ),
    ]
