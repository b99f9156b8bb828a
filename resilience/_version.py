"""The package version: the one place it is written.

``pyproject.toml`` reads it from here at build time (``[tool.hatch.version]``), so
the distribution's metadata and ``resilience.__version__`` cannot disagree.
"""

VERSION = "0.1.0"
