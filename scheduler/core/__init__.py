"""The plumbing every room uses: config, logs, metrics, health, supervisor, systemd, probes.

Imports ``accounts`` and ``snapshot`` (store drivers, errors) but no capability
and no top layer: ``core`` sits at the bottom of ``scheduler``.
"""
