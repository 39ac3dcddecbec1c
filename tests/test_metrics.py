"""The metrics endpoint, scraped over HTTP and parsed as Prometheus would."""

from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from daemon import __version__
from daemon.config import parse_listen
from daemon.operations.metrics import Metrics, is_loopback
from daemon.queue.base import STATES


def _scrape(port: int, host: str = "127.0.0.1") -> dict[tuple[str, tuple], float]:
    url_host = f"[{host}]" if ":" in host else host
    response = requests.get(f"http://{url_host}:{port}/metrics", timeout=5)
    response.raise_for_status()
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


@pytest.fixture
def metrics():
    m = Metrics()
    yield m
    m.stop_server()


def test_scraped_values_follow_the_calls(metrics):
    """Every verb shows up in a real scrape with the value it set."""
    port = metrics.start_server(port=0)
    assert port > 0
    metrics.set_files_by_state({"queued": 3, "done": 10, "failed": 1})
    metrics.file_uploaded(50_000_000, 4.0, now=1_700_000_000.0)
    metrics.file_uploaded(10_000_000, 1.0, now=1_700_000_100.0)
    metrics.retry("timeout")
    metrics.retry("http_503")
    metrics.retry("http_503")
    metrics.retry("Policy Expired!")  # tidied into a safe label
    metrics.file_failed()
    metrics.file_rejected()
    metrics.file_rejected()
    metrics.set_paused(True)
    metrics.set_watcher_healthy(True)

    s = _scrape(port)
    assert s[("seqdrop_files", (("state", "queued"),))] == 3
    assert s[("seqdrop_files", (("state", "done"),))] == 10
    assert s[("seqdrop_files", (("state", "failed"),))] == 1
    assert s[("seqdrop_files", (("state", "uploading"),))] == 0
    assert s[("seqdrop_uploaded_files_total", ())] == 2
    assert s[("seqdrop_uploaded_bytes_total", ())] == 60_000_000
    assert s[("seqdrop_upload_duration_seconds_count", ())] == 2
    assert s[("seqdrop_upload_duration_seconds_sum", ())] == 5.0
    assert s[("seqdrop_upload_throughput_bytes_per_second_count", ())] == 2
    assert s[("seqdrop_last_upload_throughput_bytes_per_second", ())] == 10_000_000
    assert s[("seqdrop_last_upload_timestamp_seconds", ())] == 1_700_000_100.0
    assert s[("seqdrop_retries_total", (("reason", "timeout"),))] == 1
    assert s[("seqdrop_retries_total", (("reason", "http_503"),))] == 2
    assert s[("seqdrop_retries_total", (("reason", "policy_expired"),))] == 1
    assert s[("seqdrop_files_failed_total", ())] == 1
    assert s[("seqdrop_files_rejected_total", ())] == 2
    assert s[("seqdrop_paused", ())] == 1
    assert s[("seqdrop_watcher_healthy", ())] == 1
    assert s[("seqdrop_start_time_seconds", ())] > 0

    metrics.set_paused(False)
    metrics.set_watcher_healthy(False)
    metrics.set_files_by_state({"done": 11})
    s = _scrape(port)
    assert s[("seqdrop_paused", ())] == 0
    assert s[("seqdrop_watcher_healthy", ())] == 0
    assert s[("seqdrop_files", (("state", "queued"),))] == 0
    assert s[("seqdrop_files", (("state", "done"),))] == 11


def test_every_name_is_prefixed_and_every_state_is_exported(metrics):
    """All series start with seqdrop_, and each state has a series even at zero."""
    port = metrics.start_server(port=0)
    s = _scrape(port)
    assert all(name.startswith("seqdrop_") for name, _ in s)
    assert {dict(labels)["state"] for name, labels in s if name == "seqdrop_files"} == set(STATES)


def test_two_instances_do_not_share_state():
    """Each Metrics has its own registry (no global state between daemons or tests)."""
    a, b = Metrics(), Metrics()
    a.file_failed()
    assert a.registry.get_sample_value("seqdrop_files_failed_total") == 1
    assert b.registry.get_sample_value("seqdrop_files_failed_total") == 0


def test_works_without_a_server():
    """The verbs are usable when metrics are disabled (no server started)."""
    m = Metrics()
    m.file_uploaded(1, 0.0)
    m.retry("")
    m.stop_server()
    assert m.registry.get_sample_value("seqdrop_retries_total", {"reason": "other"}) == 1


def test_refuses_non_loopback_unless_allowed(metrics):
    """0.0.0.0 and public addresses are refused; allow_remote=True lets an admin opt in."""
    for host in ("0.0.0.0", "::", "192.0.2.1", "example.org"):
        with pytest.raises(ValueError, match="not loopback"):
            metrics.start_server(host=host, port=0)
    port = metrics.start_server(host="0.0.0.0", port=0, allow_remote=True)
    assert _scrape(port)[("seqdrop_paused", ())] == 0


def test_ipv6_loopback_and_restart(metrics):
    """::1 is accepted; stop_server frees the port and the server can start again."""
    try:
        port = metrics.start_server(host="::1", port=0)
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    assert _scrape(port, host="::1")[("seqdrop_paused", ())] == 0
    metrics.stop_server()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://[::1]:{port}/metrics", timeout=2)
    port2 = metrics.start_server(port=0)
    assert _scrape(port2)[("seqdrop_paused", ())] == 0


def test_listen_parsing_and_loopback_check():
    """parse_listen splits HOST:PORT (IPv6 in brackets); is_loopback knows localhost and 127/8."""
    assert parse_listen("127.0.0.1:9808") == ("127.0.0.1", 9808)
    assert parse_listen("[::1]:9808") == ("::1", 9808)
    assert parse_listen("localhost:0") == ("localhost", 0)
    for bad in ("9808", "127.0.0.1", ":9808", "host:99999", "host:x"):
        with pytest.raises(ValueError):
            parse_listen(bad)
    assert is_loopback("127.0.0.2") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")


def test_build_info_oldest_waiting_and_watch_folders_in_a_scrape():
    """seqdrop_build_info carries the version; the oldest waiting file's time is 0 when none waits;
    each watch folder has a present gauge, and a folder no longer passed loses its series."""
    metrics_v = Metrics(version="1.2.3.dev4+gabc")
    port = metrics_v.start_server(port=0)
    try:
        s = _scrape(port)
        assert s[("seqdrop_build_info", (("version", "1.2.3.dev4+gabc"),))] == 1
        assert s[("seqdrop_oldest_waiting_file_timestamp_seconds", ())] == 0
        assert not [k for k in s if k[0] == "seqdrop_watch_folder_present"]

        metrics_v.set_oldest_waiting(1_700_000_000.5)
        metrics_v.set_watch_folders_present({"/srv/a": True, "/srv/b": False})
        s = _scrape(port)
        assert s[("seqdrop_oldest_waiting_file_timestamp_seconds", ())] == 1_700_000_000.5
        assert s[("seqdrop_watch_folder_present", (("path", "/srv/a"),))] == 1
        assert s[("seqdrop_watch_folder_present", (("path", "/srv/b"),))] == 0

        metrics_v.set_oldest_waiting(None)
        metrics_v.set_watch_folders_present({"/srv/b": True})
        s = _scrape(port)
        assert s[("seqdrop_oldest_waiting_file_timestamp_seconds", ())] == 0
        assert s[("seqdrop_watch_folder_present", (("path", "/srv/b"),))] == 1
        assert ("seqdrop_watch_folder_present", (("path", "/srv/a"),)) not in s
    finally:
        metrics_v.stop_server()


def test_build_info_defaults_to_the_installed_version():
    """Without an explicit version the gauge names daemon.__version__ (what `seqdrop --version` prints)."""
    assert Metrics().registry.get_sample_value("seqdrop_build_info", {"version": __version__}) == 1
