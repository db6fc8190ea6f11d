"""A throttled backfill: non-atomic, each batch committed on its own, a pause between
batches (THROTTLE_PAUSE_SECONDS) during which the connection sits idle between
transactions, as a backfill that spares the database does."""

import os
import time

from django.db import migrations


def backfill(apps, schema_editor):
    Batch = apps.get_model("throttled", "Batch")
    pause = float(os.environ.get("THROTTLE_PAUSE_SECONDS", "0"))
    for number in (1, 2, 3):
        if number > 1:
            time.sleep(pause)
        Batch.objects.using(schema_editor.connection.alias).create(number=number)


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("throttled", "0001_initial")]

    operations = [migrations.RunPython(backfill, migrations.RunPython.noop)]
