"""The lakehouse pipeline library: PostgreSQL event store -> Delta Lake, and readers of the lake.

It knows nothing of Dagster: dagster_project/ and jobs/ are thin front doors to it.
"""
