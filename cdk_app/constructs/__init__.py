"""The constructs the Quotagate stack is composed of, one per concern."""
