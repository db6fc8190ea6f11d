"""Drops a column the previous release still reads."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("shipping", "0004_shipment_note_not_null")]

    operations = [migrations.RemoveField(model_name="shipment", name="legacy")]
