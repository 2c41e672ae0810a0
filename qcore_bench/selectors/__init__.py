"""Built-in selectors; each is registered as an entry point in pyproject.toml."""
