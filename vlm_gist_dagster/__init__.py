"""VLM-GIST benchmark and pipeline as a Dagster project.

Layout (see DESIGN): ``protocol`` holds the paper's method as pure functions, ``clients`` the network
code, ``datasets`` dataset loading and downloads, ``defs`` the Dagster definitions and ``sim`` the offline
simulator servers.
"""

__version__ = "0.1.0"
