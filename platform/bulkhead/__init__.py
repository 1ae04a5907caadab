"""Bulkhead: a multi-region Heroku-style platform as code, with executable disaster recovery."""

__version__ = "0.1.0"
