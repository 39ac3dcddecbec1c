"""`seqdrop run`: the long-running service (main loop, workers, the pause gate)."""
