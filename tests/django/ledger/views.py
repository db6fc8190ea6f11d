"""What the ledger's traffic reads: release 1 reads the legacy column of every entry (an
error once the column is dropped), release 2 reads the code only."""

from django.conf import settings
from django.http import JsonResponse

from ledger.models import Entry


def entries(request):
    if settings.LEDGER_RELEASE == "1":
        rows = list(Entry.objects.values_list("code", "legacy"))
    else:
        rows = list(Entry.objects.values_list("code", flat=True))
    return JsonResponse({"release": int(settings.LEDGER_RELEASE), "rows": len(rows)})
