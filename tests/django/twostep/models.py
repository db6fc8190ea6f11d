from django.db import models


class First(models.Model):
    a = models.IntegerField(null=True)


class Second(models.Model):
    b = models.IntegerField(null=True)
