"""Starts the step: the outer phase runs the archive as a script, and so does the fast
path's check (with DJANGO_MIGRATE_FAST_PATH_CHECK_FD set); the inner phase runs it through
runpy inside Django's shell, under another name."""

import os

from django_migrate_step.config import STATUS_FD_ENV
from django_migrate_step.fast_path import FAST_PATH_CHECK_FD_ENV, fast_path_child
from django_migrate_step.runner import main

if FAST_PATH_CHECK_FD_ENV in os.environ and __name__ == "__main__":
    fast_path_child()
elif STATUS_FD_ENV in os.environ or __name__ == "__main__":
    main()
