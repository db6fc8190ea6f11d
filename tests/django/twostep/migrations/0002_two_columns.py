"""Two statements on two tables: on MariaDB (no transactional DDL) the first can be
applied while the second times out on its table lock."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("twostep", "0001_initial")]

    operations = [
        migrations.AddField(model_name="first", name="a", field=models.IntegerField(null=True)),
        migrations.AddField(model_name="second", name="b", field=models.IntegerField(null=True)),
    ]
