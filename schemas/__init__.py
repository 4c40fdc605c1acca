"""Avro schemas of labelbeam's events, consensus rows and dead letters, and their registry."""
