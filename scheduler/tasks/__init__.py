"""Async upstream tasks: recorded first, polled by nurseries, settled exactly once.

Public surface: the store (:class:`TaskStore`), the pure rules (:mod:`._states`),
the submit flow, the poller and sweeper actors. See each module's docstring.
"""
