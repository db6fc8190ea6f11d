"""The watchdog: a thread that ends the process shortly after a wait's deadline even if a
driver call never returns; disarmed while a migration runs."""

import threading
import time

from .config import EXIT_TIMEOUT, RESULT_TIMEOUT, WATCHDOG_GRACE_SECONDS
from .summary import elapsed, end


class Watchdog:
    """Ends the process shortly after a wait's deadline even if a driver call never
    returns. Disarmed while a migration runs: a running migration is never cut."""

    def __init__(self, report):
        self.report = report
        self.deadline = None
        self.what = ""
        self.lock = threading.Lock()
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()

    def arm(self, deadline, what):
        with self.lock:
            self.deadline, self.what = deadline, what

    def disarm(self):
        with self.lock:
            self.deadline = None

    def run(self):
        while True:
            time.sleep(1)
            with self.lock:
                fire = self.deadline is not None and time.monotonic() > self.deadline + WATCHDOG_GRACE_SECONDS
                what = self.what
            if fire:
                # The main thread may be stuck in a driver call: end the process from here.
                end(self.report, EXIT_TIMEOUT, RESULT_TIMEOUT, "gave up after %.0fs: %s (watchdog)" % (elapsed(), what))
