"""stationmaster's daemon layer: supervision, actors, HTTP API and CLI."""

__version__ = "0.1.0"
