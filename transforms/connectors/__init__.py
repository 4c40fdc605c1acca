"""Connectors: labeling tools' own JSON -> annotation events of the DESIGN.md contract (v2).

Pure functions only (no network, no Beam): `labelbeam pull` (pipelines/pull.py) fetches and writes.
"""
