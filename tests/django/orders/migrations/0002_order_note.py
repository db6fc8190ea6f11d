from django.db import migrations, models


class Migration(migrations.Migration):
    # Not atomic: each operation commits on its own, as large-table migrations often do.
    atomic = False
    dependencies = [("orders", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="order",
            name="note",
            field=models.TextField(blank=True, default=""),
        ),
    ]
