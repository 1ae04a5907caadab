"""Continuous backup and restore of PostgreSQL with barman-cloud (`bulkhead db`)."""
