"""Quotagate's developer tools, outside the Lambda layer: the local gateway (:mod:`quotagate_tools.local`),
the mock model server (:mod:`quotagate_tools.mock`) and the ``quotagate`` command line
(:mod:`quotagate_tools.cli`). They use the core library (``quotagate``); the core never imports them.
"""
