"""Selection: which account serves a request, its lease, stickiness and reports.

Owns the select flow, the pool cache, sticky bindings, waiting for a release, the
runtime view refresher, scoring, release/renew reports, the "no account" answer,
the Redis runtime store and its Lua scripts. Imports ``core`` only (and
``accounts`` / ``snapshot``); ``http`` and the composition root call it.
"""
