"""A data migration: gives every shipment without a note an empty one."""

from django.db import migrations


def fill_note(apps, schema_editor):
    Shipment = apps.get_model("shipping", "Shipment")
    Shipment.objects.filter(note__isnull=True).update(note="")


class Migration(migrations.Migration):
    dependencies = [("shipping", "0002_shipment_code_index")]

    operations = [migrations.RunPython(fill_note, migrations.RunPython.noop)]
