"""The warehouse: Delta tables by name under one URI, validated atomic commits, staging, the Spark bridge."""
