"""The transactional outbox: event rows, the dispatcher, webhook signing and delivery.

Knows nothing of tasks beyond the rows it is given: imports ``core`` only.
"""
