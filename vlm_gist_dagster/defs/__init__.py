"""Dagster definitions, split by concept. ``vlm_gist_dagster.definitions`` finds every definition in these
modules with ``dg.load_from_defs_folder``: nothing to register by hand. Shared selections live in
``selections.py``, the resources (filled from the environment) in ``resources.py``; support code that
holds no definitions (retry policy, pools, metadata previews) in ``vlm_gist_dagster.orchestration``."""
