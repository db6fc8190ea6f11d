"""An app that keeps rows up to date from post_migrate, as many real apps do. Each run
writes a row and appends a line to UPKEEP_RUNS_FILE (when set); UPKEEP_FAIL=1 makes it
raise after writing nothing, UPKEEP_SLEEP holds it for that many seconds first (so that
concurrent pods overlap)."""

import os
import time

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def record_run(sender, using="default", **kwargs):
    if os.environ.get("UPKEEP_SLEEP"):
        time.sleep(float(os.environ["UPKEEP_SLEEP"]))
    if os.environ.get("UPKEEP_FAIL") == "1":
        raise RuntimeError("the upkeep receiver fails on purpose")
    from upkeep.models import UpkeepRun

    UpkeepRun.objects.using(using).create(pid=os.getpid())
    if os.environ.get("UPKEEP_RUNS_FILE"):
        with open(os.environ["UPKEEP_RUNS_FILE"], "a") as runs:
            runs.write("%d\n" % os.getpid())


class UpkeepConfig(AppConfig):
    name = "upkeep"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        post_migrate.connect(record_run, sender=self)
