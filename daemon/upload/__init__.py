"""Upload: one queued item through the One Codex API and S3. pipeline (the entry point and the
standard route: init_upload → S3 POST of a form-data body, formdata → confirm_upload), multipart_route
(files over 5 GiB: init_multipart_upload → S3 multipart upload, s3multipart → callback), sample_route
(a sample of several files: lanes as one stream, R1+R2 under one sample, the pair check), steps (what
both routes share), client (the API and the S3 POST), source (the way a file is opened), retrying
(the retry policy), throttle (the bandwidth cap), build (client and pipeline from settings)."""
