"""Release 2 with migrations marked to run before the deploy and always
(LEDGER_MIGRATIONS=safe): both are applied at pod start."""
