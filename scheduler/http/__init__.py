"""The HTTP API: one module per API, served from one declarative ``Endpoint`` table.

Top layer beside ``cli``: may import the capabilities and ``core``; no capability
imports it. ``endpoints`` holds auth, body decoding and the error mapping.
"""
