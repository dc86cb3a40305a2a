# The package version: the single source read by pyproject.toml (setuptools dynamic) and `--version`.
__version__ = "0.1.0"
