"""``lum bench ...``: throughput benchmarks that write JSON reports with ratios against a baseline run in the same process."""
