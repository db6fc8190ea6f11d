import django.db.models.deletion
import swapper
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("gadgets", "0001_initial"), swapper.dependency("gadgets", "Gadget")]

    operations = [
        migrations.CreateModel(
            name="Part",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                (
                    "gadget",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, to=swapper.get_model_name("gadgets", "Gadget")
                    ),
                ),
            ],
        ),
    ]
