"""Release 1 of the ledger: the legacy column exists."""
