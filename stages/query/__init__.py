"""Lookups of user knowledge by user and condition (Python API and ``lum query``)."""
