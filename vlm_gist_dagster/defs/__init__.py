"""Dagster definitions, split by concept. ``vlm_gist_dagster.definitions`` assembles them into the one
``Definitions`` object."""
