"""Safe: the model forgets the field, the column stays (the expand/contract way)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("inventory", "0002_remove_item_legacy")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.RemoveField(model_name="item", name="note")],
            database_operations=[],
        )
    ]
