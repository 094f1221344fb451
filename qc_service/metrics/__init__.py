"""Image-quality metrics as pure functions on numpy arrays and masks (no I/O, no bus)."""
