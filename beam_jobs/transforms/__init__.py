"""Composite PTransforms of the Beam jobs: read, validate, join and chunk, statistics, write."""
