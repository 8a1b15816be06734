"""``lum bench ...``: benchmarks writing JSON reports: ratios against a baseline run in the same process, or latency."""
