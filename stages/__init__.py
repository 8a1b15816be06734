"""lum-pipeline stages: the daily steps, their shared layers, and the ways in (CLI, pipeline, benches).

Every stage module exposes a frozen ``Config`` dataclass and one ``run`` entry point, listed in
``stages.pipeline.registry``. Nothing runs at import time.
"""
