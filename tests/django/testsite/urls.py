"""The test project's views: /ledger/ with the ledger app (LEDGER_APP=1)."""

from django.conf import settings
from django.urls import path

urlpatterns = []
if "ledger" in settings.INSTALLED_APPS:
    from ledger.views import entries

    urlpatterns.append(path("ledger/", entries))
