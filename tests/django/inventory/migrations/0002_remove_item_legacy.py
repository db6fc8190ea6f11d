"""Unsafe while the previous release serves: it still reads the column."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("inventory", "0001_initial")]

    operations = [migrations.RemoveField(model_name="item", name="legacy")]
