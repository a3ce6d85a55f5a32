"""embedmigrate: migrate a vector collection to a new embedding model without re-encoding it."""

__version__ = "0.1.0"
