"""Handlers in processes of their own: the Lambda Runtime API (``interface = "runtime-api"``), and
``isolation = "process"`` for Python handlers, both one warm process per lane, killed at the timeout.

Light on purpose: the worker process imports this package, so it imports nothing itself.
"""
