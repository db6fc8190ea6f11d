from django.db import models


class UpkeepRun(models.Model):
    """One row each time the app's post_migrate receiver runs, as an app's upkeep would
    write (Nautobot's Jobs, Django's permissions)."""

    pid = models.IntegerField()
    ran_at = models.DateTimeField(auto_now_add=True)
