"""Release 2 of the ledger: the legacy column is dropped, unmarked (no django-safemigrate
import, so images without the package run it)."""
