"""The one place that turns Settings into an API client and a Pipeline (the daemon, `seqdrop
upload` and `seqdrop check` all build theirs here, so a new setting is wired once)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from daemon import redact
from daemon.config import Settings
from daemon.detection.roots import WatchRoots
from daemon.landing.planner import LandingClient, Planner
from daemon.queue.base import Store
from daemon.upload.client import OneCodexClient
from daemon.upload.pipeline import Pipeline
from daemon.upload.steps import Emit, no_emit


def make_client(settings: Settings, api_key: str, *, read_timeout_s: float | None = None,
                on_answer: Callable[[str, int], None] | None = None) -> OneCodexClient:
    """The API client for settings' base_url (read_timeout_s: a shorter one for interactive checks).
    The key is registered with daemon.redact before any request can carry it, so no form of it can
    come back through a server's words (the client registers a key it is given later, too)."""
    redact.register(api_key)
    api = settings.api
    return OneCodexClient(api.base_url, api_key, connect_timeout_s=api.connect_timeout_s,
                          read_timeout_s=api.read_timeout_s if read_timeout_s is None else read_timeout_s,
                          call_deadline_s=api.call_deadline_s, stall_timeout_s=settings.upload.stall_timeout_s,
                          on_answer=on_answer)


def make_pipeline(settings: Settings, *, store: Store, client: OneCodexClient, log: Any,
                  stop: threading.Event, throttle: Callable[[int], None] | None = None,
                  emit: Emit = no_emit) -> Pipeline:
    """The upload pipeline as [upload] configures it; each sample told where it lands as [samples] and
    the watch paths say (daemon/landing/planner.py: the sample sheet read at upload time, project names
    resolved through the client, an init refused for its project sent again once, then without it)."""
    up = settings.upload
    planner = Planner.from_settings(settings, fetch=client.projects, store=store, log=log)
    return Pipeline(store=store, client=LandingClient(client, planner), log=log, validate=up.validate,
                    block_size=up.block_size, plan=planner.plan,
                    throttle=throttle, stop=stop, emit=emit, max_backoff_s=up.max_backoff_s,
                    allow_missing_etag=up.allow_missing_etag,
                    multipart_threshold_bytes=up.multipart_threshold_bytes,
                    s3_endpoint_url=up.multipart_s3_endpoint, s3_region=up.multipart_s3_region,
                    roots=WatchRoots.of(settings.watch))
