"""Shared layers every stage uses: typed configs, days, settings, progress lines, the Spark session, conditions."""
