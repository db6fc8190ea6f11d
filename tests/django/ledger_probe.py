"""The ledger app as one release's code sees it, with the settings of the environment
(LEDGER_APP=1, LEDGER_RELEASE, the database):

    python ledger_probe.py add CODE   adds an entry (release 1 also sets its legacy column)
    python ledger_probe.py get        requests /ledger/ and prints "STATUS BODY"
"""

import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testsite.settings")

import django

django.setup()

from django.conf import settings
from django.test import Client
from ledger.models import Entry

if sys.argv[1] == "add":
    fields = {"legacy": "old-" + sys.argv[2]} if settings.LEDGER_RELEASE == "1" else {}
    Entry.objects.create(code=sys.argv[2], **fields)
    print("added")
else:
    response = Client(raise_request_exception=False).get("/ledger/")
    print(response.status_code, response.content.decode())
