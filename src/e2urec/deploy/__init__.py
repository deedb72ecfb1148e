"""Deployments: versions, a data store, a request queue and worker, a ledger, checks, serving.

The defaults the command line shows live here, so that parsing imports nothing heavy."""

MAX_USERS = 64  # most users in one unlearning pass
QUEUE_LIMIT = 1000  # unfinished requests a queue holds before refusing more
