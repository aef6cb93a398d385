"""Client protocols other than chat completions: each translates its requests into the internal chat
request, runs it through the one request pipeline (:meth:`quotagate.logic.gateway.Gateway.chat`:
admission, failover, metering, settlement) and translates the answer back."""
