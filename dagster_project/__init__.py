"""Dagster definitions for the lakehouse pipeline (thin: every asset calls one library function)."""

from dagster_project.definitions import defs

__all__ = ["defs"]
