"""Safe: a nullable column the previous release can ignore."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("inventory", "0003_forget_item_note")]

    operations = [
        migrations.AddField(model_name="item", name="label", field=models.CharField(max_length=50, null=True))
    ]
