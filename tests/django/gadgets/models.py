"""A swappable model whose setting swapper defaults when the app loads (as Wagtail's page
model and openwisp's models do): the settings module never sets GADGETS_GADGET_MODEL."""

import swapper
from django.db import models


class Gadget(models.Model):
    name = models.CharField(max_length=50)

    class Meta:
        swappable = swapper.swappable_setting("gadgets", "Gadget")


class Part(models.Model):
    gadget = models.ForeignKey(swapper.get_model_name("gadgets", "Gadget"), on_delete=models.CASCADE)
