"""The VLM-GIST method and its evaluation as pure, typed functions: no Dagster, no network.

Find a stage of the paper by its name: ``structured_description`` (stage A), ``detection`` (stage B),
``validation`` (stage C), ``label_matching`` (stage D), ``evaluation`` and ``leaderboard`` (stage E).
"""
