"""Pipeline specs (YAML): loading with line numbers, validation, and applying to the ops DB."""
