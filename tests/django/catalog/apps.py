import os

from django.apps import AppConfig


class CatalogConfig(AppConfig):
    name = "catalog"

    def ready(self):
        # Tests count Django start-ups (django.setup() runs this once): each appends its PID.
        if os.environ.get("DJANGO_STARTS_FILE"):
            with open(os.environ["DJANGO_STARTS_FILE"], "a") as starts:
                starts.write("%d\n" % os.getpid())
