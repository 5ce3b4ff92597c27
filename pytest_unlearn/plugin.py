"""pytest plugin wiring for pytest-unlearn (registered as ``unlearn``)."""
