"""What the gateway serves right now, shared by the query and indexing paths."""
