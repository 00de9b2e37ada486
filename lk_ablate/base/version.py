"""The package version, in the bottom layer so results files can record it (keep equal to pyproject.toml's)."""
__version__ = "0.1.0"
