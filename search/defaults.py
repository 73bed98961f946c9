"""Defaults the command line shows in ``--help``: plain values, so that parsing imports nothing heavy."""

DEFAULT_STORAGE = "sqlite:///results/search.db"
DEFAULT_RESULTS = "results"
TABLE_FORMATS = ("csv", "parquet", "json")
