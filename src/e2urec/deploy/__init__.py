"""Deletion requests as a workflow: deployments, versions, the data store, ledger and server."""
