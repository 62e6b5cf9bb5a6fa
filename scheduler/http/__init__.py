"""The HTTP API: one module per API, served from one declarative ``Endpoint`` table.

Top layer beside ``cli``: may import the capabilities and ``core``; no capability
imports it. ``endpoints`` holds auth, body decoding and the error mapping, for any
transport; ``planes`` splits the table over two listeners: the data plane
(``data_plane`` on the lean ``wire`` server: the gateway's routes and the probes)
and the control plane (``app`` on hypercorn + starlette, ``server``: admin,
metrics, OpenAPI, the probes).
"""
