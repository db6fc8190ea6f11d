"""The release the database is at: a table the tests fill with 200,000 rows."""

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Shipment",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("code", models.CharField(max_length=20)),
                ("weight", models.IntegerField()),
                ("note", models.CharField(max_length=50, null=True)),
                ("legacy", models.CharField(max_length=20, null=True)),
            ],
        ),
    ]
