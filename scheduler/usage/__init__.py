"""The quota usage prober: active usage reads that bring paused accounts back at reset.

May import ``selection`` (the runtime write path), ``upstream`` and ``core``.
"""
