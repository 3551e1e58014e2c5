"""CCAT workflow manager core: settings, CLI and the domain logic (plain Python, no Prefect)."""
