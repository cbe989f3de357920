"""Example plug-ins, registered through entry points in pyproject.toml."""
