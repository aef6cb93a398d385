"""Usage events and rollups: the settled reservation item is the usage record (transactional
outbox), an EventBridge Pipe turns it into a ``Request Settled`` event, and a rollup aggregates
those events exactly once per tenant, key and model."""
