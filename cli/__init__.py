"""The `pyoverlay` command: `plugin` runs the driver, the rest inspect it."""
