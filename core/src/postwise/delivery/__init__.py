"""Delivery: from a campaign or a send request to a message accepted by a provider.

The path (see docs/delivery.md): :mod:`~postwise.delivery.dispatch` gates each recipient
(:mod:`~postwise.compliance.gate`, :mod:`~postwise.delivery.frequency`), writes ledger rows
(:mod:`~postwise.delivery.ledger`) and enqueues batches on ``send.<provider>`` RQ queues
(:mod:`~postwise.delivery.queue`); a worker (:mod:`~postwise.delivery.worker`) runs each job
through its entry point (:mod:`~postwise.delivery.jobs`), claims the batch,
re-checks the gate, renders and signs every message (:mod:`~postwise.delivery.compose`), takes
tokens from the provider's bucket (:mod:`~postwise.delivery.ratelimit`), sends, and records each
outcome exactly once (:mod:`~postwise.delivery.outcomes`, :mod:`~postwise.delivery.recovery`).
"""
