"""Executing runs: lifecycle, run directories, staging, manifest, commands and results."""
