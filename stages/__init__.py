"""lum-pipeline stages: ingest, sequences, pretrain, infer, join, evaluate, query, cli.

Every stage module exposes a frozen ``Config`` dataclass, pure functions, and one
``run(cfg, *, ds, warehouse) -> dict`` entry point. Nothing runs at import time.
"""
