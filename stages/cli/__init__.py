"""The ``lum`` command."""
