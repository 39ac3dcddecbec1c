"""Detection: which files exist, when they are finished (watcher, tracker, run markers)."""
