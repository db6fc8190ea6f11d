"""Release 2 with the column drop marked for after the deploy, with a delay
(LEDGER_MIGRATIONS=marked)."""
