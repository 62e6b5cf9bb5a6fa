"""Upstream platforms: the adapter seam (DashScope, Kling, ...) and the upstream simulator.

A capability: imports ``core`` only. ``tasks`` and ``usage`` call it.
"""
