"""The ways in: the stage registry, the daily task bodies, backfill, the demo and its report."""
