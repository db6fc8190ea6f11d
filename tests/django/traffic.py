"""Test helpers that play the running release against the database of the settings.

python traffic.py hold TABLE SECONDS   a transaction that reads TABLE and stays open
python traffic.py query TABLE SECONDS  SELECT from TABLE every 100 ms; prints the
                                       longest wait in seconds as `max_wait=N`
"""

import os
import sys
import time

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testsite.settings")
django.setup()

from django.db import connection, transaction  # noqa: E402


def hold(table, seconds):
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM %s" % connection.ops.quote_name(table))
            cursor.fetchone()
            print("holding", flush=True)
            time.sleep(seconds)


def query(table, seconds):
    longest = 0.0
    end = time.monotonic() + seconds
    with connection.cursor() as cursor:
        while time.monotonic() < end:
            started = time.monotonic()
            cursor.execute("SELECT COUNT(*) FROM %s" % connection.ops.quote_name(table))
            cursor.fetchone()
            longest = max(longest, time.monotonic() - started)
            time.sleep(0.1)
    print("max_wait=%.3f" % longest, flush=True)


if __name__ == "__main__":
    {"hold": hold, "query": query}[sys.argv[1]](sys.argv[2], float(sys.argv[3]))
