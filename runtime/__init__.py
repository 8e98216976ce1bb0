"""pagedc.runtime: runs compiled paged models (block manager, sessions, engine)."""
