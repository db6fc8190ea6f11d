from django.db import models


class Item(models.Model):
    code = models.CharField(max_length=20)
    label = models.CharField(max_length=50, null=True)
