"""Upload: one queued item through the One Codex API and S3 (pipeline, API client, form-data body,
S3 multipart, the way a source file is opened, the retry policy, the throttle)."""
