"""Async upstream tasks: records, the transition table, ledger, claimer, pollers, sweeper.

A capability above the others: may import ``selection``, ``upstream``, ``outbox``
and ``core``; never ``http`` or ``cli``.
"""
