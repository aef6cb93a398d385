"""Quotagate core library: shared by every Lambda function and by the local gateway.

Nothing in this package knows about Lambda events or HTTP frameworks; handlers in
``functions/`` translate events into calls on it.
"""

__version__ = "0.1.0"
