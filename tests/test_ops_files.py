"""ops/: the Grafana dashboard and the Prometheus alerting rules are built on metrics seqdrop exports.

Every metric they name must appear in a real scrape: of daemon.operations.metrics.Metrics served on
loopback after each of its verbs, and of a running daemon (`seqdrop run`) that has uploaded a file
through a retry. The rules are parsed structurally always, and, where promtool exists (Debian's package
`prometheus`), checked with `promtool check rules` and exercised with `promtool test rules` on
synthetic series; the dashboard's queries are checked by promtool as recording rules.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import Daemon, all_in, fastq_bytes, wait_for, write_config

from daemon.operations.metrics import Metrics
from daemon.sandbox import Sandbox
from daemon.sandbox.faults import Fault

OPS = Path(__file__).resolve().parents[1] / "ops"
DASHBOARD = OPS / "grafana" / "seqdrop.json"
RULES = OPS / "prometheus" / "seqdrop-alerts.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: apt-get "
                                    "install prometheus); the rules are still parsed structurally")

#: Names that may stand in a query without seqdrop exporting them: Prometheus writes `up` itself.
PROMETHEUS_OWN = {"up"}
#: Metrics with a setter that the service does not call yet (the lead wires them into its
#: housekeeping); test_the_running_daemon_exports_what_awaits_wiring says when that is done.
AWAITING_WIRING: set[str] = set()
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
             "bool", "offset", "inf", "nan"}


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _dashboard_exprs() -> list[str]:
    d = _dashboard()
    exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in d["annotations"]["list"] if "expr" in a]
    return exprs


def _grafana_to_promql(expr: str) -> str:
    """A dashboard query as Prometheus would receive it: Grafana's variables filled in."""
    return expr.replace("$instance", ".*").replace("$__rate_interval", "5m")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords and label names left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                 # string literals
    text = re.sub(r"\{[^}]*\}", "", text)                            # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)                           # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[m.end():].lstrip()[:1]
        word = m.group(0)
        if following == "(" or word.lower() in _KEYWORDS or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        if text[max(0, m.start() - 1)].isdigit():    # the unit of a number such as 1e3
            continue
        names.add(word)
    return names


@pytest.fixture(scope="module")
def scraped() -> Iterator[set[str]]:
    """The sample names of a real scrape, after every verb has been used once (labelled series exist
    only then)."""
    metrics = Metrics()
    metrics.set_files_by_state({"queued": 2, "done": 5})
    metrics.file_uploaded(1_000_000, 2.0)
    metrics.retry("timeout")
    metrics.file_failed()
    metrics.file_rejected()
    metrics.set_paused(True)
    metrics.set_watcher_healthy(True)
    metrics.set_oldest_waiting(1_700_000_000.0)
    metrics.set_watch_folders_present({"/srv/sequencer/output": True})
    port = metrics.start_server("127.0.0.1", 0)
    try:
        yield _names(_scrape(f"127.0.0.1:{port}"))
    finally:
        metrics.stop_server()


def _scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        return response.read().decode()


def _names(text: str) -> set[str]:
    """The sample names of a scrape's text."""
    return {re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group(0)
            for line in text.splitlines() if line and not line.startswith("#")}


def _ops_metric_names() -> set[str]:
    """Every metric a rule, a panel, a variable or an annotation names."""
    names = {n for rule in _rules() for n in metric_names(rule["expr"])}
    names |= {n for e in _dashboard_exprs() for n in metric_names(_grafana_to_promql(e))}
    names |= set(re.findall(r"seqdrop_[a-z0-9_]+", DASHBOARD.read_text()))
    return names - PROMETHEUS_OWN


@pytest.fixture(scope="module")
def daemon_scrape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """The sample names a running `seqdrop run` serves once it has confirmed a file after one retry
    (the retries series exists only after a retry)."""
    tmp_path = tmp_path_factory.mktemp("daemon")
    watch = tmp_path / "watch"
    watch.mkdir()
    with Sandbox(api_keys=("test-key",)) as sandbox:
        sandbox.add_fault(Fault(target="init_upload", kind="status", status=503))
        (watch / "a.fastq").write_bytes(fastq_bytes(20_000, seed=3))
        cfg = write_config(tmp_path, watch=[watch], api_url=sandbox.api_url, workers=1,
                           extra='\n[metrics]\nenabled = true\nlisten = "127.0.0.1:0"\n')
        with Daemon(cfg) as d:
            d.wait_files(all_in("done", ["a.fastq"]), 60, "a.fastq done")
            address = next(e["address"] for e in d.log_events() if e.get("event") == "metrics.listening")

            def counted() -> str | None:
                text = _scrape(address)
                return text if 'seqdrop_files{state="done"} 1.0' in text else None

            text = wait_for(counted, 15, "the housekeeping to publish the counts")
            assert d.terminate() == 0
    yield _names(text)


def test_metric_names_are_read_from_promql() -> None:
    """The name reader keeps metrics and drops functions, keywords, labels, ranges and strings."""
    expr = ('sum by (job, instance) (rate(seqdrop_a_total{state=~"x|y"}[5m])) > 0 and on (instance) '
            '(time() - ((seqdrop_b > 0) or seqdrop_c)) > 7200 unless on (job) up == 1')
    assert metric_names(expr) == {"seqdrop_a_total", "seqdrop_b", "seqdrop_c", "up"}


def test_every_metric_the_rules_name_is_exported(scraped: set[str]) -> None:
    """No rule refers to a metric that a running seqdrop does not export."""
    for rule in _rules():
        unknown = metric_names(rule["expr"]) - scraped - PROMETHEUS_OWN
        assert not unknown, f"{rule['alert']}: {unknown} not in a scrape of seqdrop"


def test_every_metric_the_dashboard_names_is_exported(scraped: set[str]) -> None:
    """No panel, variable or annotation of the dashboard refers to a metric seqdrop does not export."""
    for expr in _dashboard_exprs():
        unknown = metric_names(_grafana_to_promql(expr)) - scraped - PROMETHEUS_OWN
        assert not unknown, f"{expr}: {unknown} not in a scrape of seqdrop"
    for name in re.findall(r"seqdrop_[a-z0-9_]+", DASHBOARD.read_text()):
        assert name in scraped, name


def test_a_running_daemon_exports_every_metric_the_ops_files_name(daemon_scrape: set[str]) -> None:
    """The scrape of a real `seqdrop run` holds each metric named in ops/ (but those awaiting wiring)."""
    missing = _ops_metric_names() - AWAITING_WIRING - daemon_scrape
    assert not missing, f"named in ops/ but not served by a running seqdrop: {sorted(missing)}"
    assert "seqdrop_build_info" in daemon_scrape


def test_the_running_daemon_exports_what_awaits_wiring(daemon_scrape: set[str]) -> None:
    """The metrics whose setter the service has yet to call are in a running daemon's scrape too."""
    assert AWAITING_WIRING <= daemon_scrape


def test_the_rules_cover_what_the_lab_must_hear_about() -> None:
    """One alert each for: daemon down, paused over 10 minutes, failed and rejected files, no upload
    progress while files wait, the watcher down, a watch folder missing, a file waiting for days;
    each with a severity, a summary and the fix."""
    rules = {r["alert"]: r for r in _rules()}
    assert len(rules) == len(_rules()), "alert names must be unique"
    assert {"SeqdropDown", "SeqdropUploadsPaused", "SeqdropFilesFailed", "SeqdropFilesRejected",
            "SeqdropNoUploadProgress", "SeqdropWatcherDown", "SeqdropWatchFolderMissing",
            "SeqdropFileWaitingLong"} <= set(rules)
    assert rules["SeqdropUploadsPaused"]["for"] == "10m"
    assert "seqdrop_paused" in rules["SeqdropUploadsPaused"]["expr"]
    assert 'job="seqdrop"' in rules["SeqdropDown"]["expr"]
    for name, rule in rules.items():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), name


def test_the_dashboard_shows_uploads_rate_queue_pauses_and_failures() -> None:
    """The dashboard has a panel for each topic, unique ids, a datasource variable, and a layout
    inside Grafana's 24 columns with no two panels overlapping."""
    d = _dashboard()
    assert d["uid"] == "seqdrop" and d["title"] == "seqdrop"
    panels = d["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    variables = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "instance"} <= variables
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]
    shown = {name for p in panels for t in p.get("targets", []) for name in metric_names(t["expr"])}
    for needed in ("seqdrop_uploaded_files_total", "seqdrop_uploaded_bytes_total", "seqdrop_files",
                   "seqdrop_paused", "seqdrop_files_failed_total", "seqdrop_files_rejected_total",
                   "seqdrop_last_upload_timestamp_seconds", "seqdrop_oldest_waiting_file_timestamp_seconds",
                   "seqdrop_watch_folder_present", "seqdrop_build_info"):
        assert needed in shown, needed


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    """`promtool check rules` passes (expressions, durations and annotation templates)."""
    done = subprocess.run([PROMTOOL, "check", "rules", RULES], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_accepts_every_dashboard_query(tmp_path: Path) -> None:
    """Each dashboard query, with Grafana's variables filled in, parses as PromQL."""
    rules = [{"record": f"seqdrop:dashboard_query_{i}", "expr": _grafana_to_promql(e)}
             for i, e in enumerate(_dashboard_exprs())]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run([PROMTOOL, "check", "rules", path], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def _alert(name: str, at: str, *expected: dict[str, str]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": name, "exp_alerts": [{"exp_labels": e} for e in expected]}


def _series(name: str, values: str, instance: str = "a", **labels: str) -> dict[str, str]:
    inner = ", ".join(f'{k}="{v}"' for k, v in {"job": "seqdrop", "instance": instance, **labels}.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


A = {"job": "seqdrop", "instance": "a"}
CRIT, WARN = {**A, "severity": "critical"}, {**A, "severity": "warning"}


def _promtool_test(tmp_path: Path, tests: list[dict[str, Any]], *, evaluation_interval: str = "1m") -> None:
    """Run `promtool test rules` on the shipped rules with these test groups; fail with its words."""
    # promtool compares annotations too; the expressions, delays and labels are what is tested here
    # (check rules above validates the annotation templates).
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules_path = tmp_path / "rules.yml"
    rules_path.write_text(yaml.safe_dump(rules))
    path = tmp_path / "tests.yml"
    path.write_text(yaml.safe_dump({"rule_files": [str(rules_path)], "evaluation_interval": evaluation_interval,
                                    "tests": tests}))
    done = subprocess.run([PROMTOOL, "test", "rules", path], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_the_alerts_fire_when_they_should_and_not_before(tmp_path: Path) -> None:
    """On synthetic series (`promtool test rules`): each alert fires after its delay, not before; the
    no-progress alert stays quiet while paused and when an upload was confirmed recently."""
    tests = [
        {"interval": "1m", "input_series": [
            _series("up", "1 0x20"), _series("seqdrop_paused", "0 1x20"),
            _series("seqdrop_watcher_healthy", "1 0x20"),
            _series("seqdrop_files_failed_total", "0 0 1 1"), _series("seqdrop_files_rejected_total", "0x3 2")],
         "alert_rule_test": [
            _alert("SeqdropDown", "4m"), _alert("SeqdropDown", "7m", CRIT),
            _alert("SeqdropUploadsPaused", "9m"), _alert("SeqdropUploadsPaused", "12m", CRIT),
            _alert("SeqdropWatcherDown", "7m", CRIT),
            _alert("SeqdropFilesFailed", "1m"), _alert("SeqdropFilesFailed", "3m", WARN),
            _alert("SeqdropFilesRejected", "3m"), _alert("SeqdropFilesRejected", "5m", WARN)]},
        # Folder /srv/b vanishes at t=2m (/srv/a stays): the alert fires for /srv/b alone after 10 min.
        {"interval": "1m", "input_series": [
            _series("seqdrop_watch_folder_present", "1x30", path="/srv/a"),
            _series("seqdrop_watch_folder_present", "1 1 0x30", path="/srv/b")],
         "alert_rule_test": [
            _alert("SeqdropWatchFolderMissing", "11m"),
            _alert("SeqdropWatchFolderMissing", "13m", {**CRIT, "path": "/srv/b"})]},
        # Started at t=0, files queued, nothing confirmed: quiet until 2 h + 15 min. Host b was paused
        # throughout; host c confirmed an upload at t=100 min.
        {"interval": "1m", "input_series": [
            _series("seqdrop_files", "3x200", state="queued"), _series("seqdrop_start_time_seconds", "0x200"),
            _series("seqdrop_last_upload_timestamp_seconds", "0x200"), _series("seqdrop_paused", "0x200"),
            _series("seqdrop_files", "3x200", "b", state="queued"), _series("seqdrop_start_time_seconds", "0x200", "b"),
            _series("seqdrop_last_upload_timestamp_seconds", "0x200", "b"), _series("seqdrop_paused", "1x200", "b"),
            _series("seqdrop_files", "3x200", "c", state="queued"), _series("seqdrop_start_time_seconds", "0x200", "c"),
            _series("seqdrop_last_upload_timestamp_seconds", "0x99 6000x100", "c"),
            _series("seqdrop_paused", "0x200", "c")],
         "alert_rule_test": [
            _alert("SeqdropNoUploadProgress", "130m"),
            _alert("SeqdropNoUploadProgress", "150m", WARN)]},
    ]
    _promtool_test(tmp_path, tests)


@needs_promtool
def test_the_waiting_file_alert_fires_after_four_days(tmp_path: Path) -> None:
    """Evaluated at 5 days: a file waiting since day 0.5 (4.5 days) alerts; one since day 1.5 (3.5
    days) does not, nor does 0 (nothing waits); at 4 days nothing alerts yet."""
    tests = [{"interval": "1h", "input_series": [
        _series("seqdrop_oldest_waiting_file_timestamp_seconds", "43200x120"),
        _series("seqdrop_oldest_waiting_file_timestamp_seconds", "129600x120", "b"),
        _series("seqdrop_oldest_waiting_file_timestamp_seconds", "0x120", "c")],
        "alert_rule_test": [_alert("SeqdropFileWaitingLong", "4d"),
                            _alert("SeqdropFileWaitingLong", "5d", WARN)]}]
    _promtool_test(tmp_path, tests, evaluation_interval="1h")
