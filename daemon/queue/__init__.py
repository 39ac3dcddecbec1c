"""The queue: the persistent truth about every file version (the store interface and its SQLite
implementation)."""
