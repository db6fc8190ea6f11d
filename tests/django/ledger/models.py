"""The ledger: release 1 has a legacy column, release 2 dropped it (LEDGER_RELEASE)."""

from django.conf import settings
from django.db import models


class Entry(models.Model):
    code = models.CharField(max_length=20)
    if settings.LEDGER_RELEASE == "1":
        legacy = models.CharField(max_length=20, null=True)
