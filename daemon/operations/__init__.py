"""Operations: what tells people and machines what seqdrop is doing (logs, sd_notify, metrics,
webhook notifications)."""
