"""Dagster support code that holds no definitions: the retry policy and concurrency pools the assets
use, the failures that must not be retried, and the metadata the UI shows. ``defs/`` imports it;
``dg.load_from_defs_folder`` loads only ``defs/``, so every module there holds definitions."""
