"""The previous release of the case named by CORPUS_CASE (see corpus/cases.py)."""

import os

from django.db import migrations

from corpus.cases import BASE, CASES


class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = BASE + CASES[os.environ["CORPUS_CASE"]]["before"]
