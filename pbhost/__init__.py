"""pbhost: run PocketBase and its AI sidecars as one supervised unit."""

__version__ = "0.1.0"
