"""Delete and change feed: the rest of an instance's life after it is stored."""
