"""The migration the case named by CORPUS_CASE ships (see corpus/cases.py)."""

import os

from django.db import migrations

from corpus.cases import CASES


class Migration(migrations.Migration):
    dependencies = [("corpus", "0001_before")]
    operations = CASES[os.environ["CORPUS_CASE"]]["change"]
