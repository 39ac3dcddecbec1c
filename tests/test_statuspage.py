"""The read-only status page: in a real headless browser during a real daemon run, over HTTP on
loopback (basic auth, HTTPS, escaping, secrets), and what it groups and charts."""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
import requests
import structlog
import trustme
from harness import ROOT, Daemon, all_in, by_name, fastq_bytes, write_config

from daemon import config, redact
from daemon.errors import ConfigError
from daemon.operations.statuspage import (
    CREDENTIAL_NAME,
    StatusPage,
    build_status_page,
    group_runs,
    run_folder,
    throughput_per_minute,
)
from daemon.queue.base import FileRow, Identity
from daemon.queue.sqlite import SqliteStore
from daemon.sandbox import Sandbox

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get "
                                    "install chromium; `scripts/dev test` installs it when run as root)")
#: Where the browser test keeps its screenshot for a person to look at (ignored by git).
ARTIFACTS = ROOT / "tests" / "artifacts"
LOG = structlog.get_logger("test")
REASON = "not FASTQ: the file ends inside a record (line 4 of the last record is missing)"


# -- a page the browser sees -------------------------------------------------------------------

class Rows(HTMLParser):
    """The file rows of a page: for each <tr data-state> its data-state and the text of its cells,
    keyed by class (name, state, num, sample, reason, when)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []
        self._cell: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and "data-state" in a and "data-id" in a:
            self.rows.append({"data-state": a["data-state"] or ""})
        elif tag == "td" and self.rows and self._cell is None:
            self._cell = (a.get("class") or "").split(" ")[0] or "when"

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell and self.rows:
            self.rows[-1][self._cell] = self.rows[-1].get(self._cell, "") + data


def _browser(url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Debian chromium with a fresh profile, no background traffic, no sandbox (root in CI)."""
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}", *args, url]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=90)


@needs_chromium
def test_the_browser_shows_a_confirmed_sample_and_a_rejected_file_with_its_reason(
        tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    """`seqdrop run` with [status_page] enabled serves the page itself: during the run chromium renders
    it with the confirmed file's sample id and the truncated file's rejection reason in its run (a
    screenshot is kept); SIGTERM stops the page with the daemon."""
    run = watch_dir / "run_0001"
    run.mkdir()
    (run / "good_R1.fastq").write_bytes(fastq_bytes(30_000, seed=1))
    broken = fastq_bytes(20_000, seed=2)
    (run / "broken_R1.fastq").write_bytes(broken[: len(broken) // 2 + 7])     # cut inside a record
    # pairing off: two R1s without R2s would wait group_wait_seconds (120 s) before going single-end
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url, workers=1,
                       extra='\n[status_page]\nenabled = true\nlisten = "127.0.0.1:0"\n'
                             '\n[samples]\npairing = "off"\n')
    with Daemon(cfg) as d:
        files = d.wait_files(all_in("done", ["good_R1.fastq"]), 60, "good_R1.fastq done")
        files = d.wait_files(all_in("rejected", ["broken_R1.fastq"]), 60, "broken_R1.fastq rejected")
        sample_id = by_name(files)["good_R1.fastq"][-1]["sample_id"]
        reason = by_name(files)["broken_R1.fastq"][-1]["error"]
        assert sample_id and reason
        [listening] = [e for e in d.log_events() if e.get("event") == "status_page.listening"]
        url = listening["url"]
        assert url.startswith("http://127.0.0.1:") and listening["auth"] is False
        dom = _browser(url, tmp_path, "--dump-dom")
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "statuspage.png"
        taken = _browser(url, tmp_path, "--window-size=1280,1200", f"--screenshot={shot}")
        assert d.alive()
        assert d.terminate() == 0
    with pytest.raises(requests.ConnectionError):      # the page went with the daemon
        requests.get(url, timeout=5)
    assert dom.returncode == 0, dom.stderr[-2000:]
    parser = Rows()
    parser.feed(dom.stdout)
    rows = {r["name"]: r for r in parser.rows}
    assert rows["good_R1.fastq"]["state"] == "done" and rows["good_R1.fastq"]["sample"] == sample_id
    assert rows["broken_R1.fastq"]["state"] == "rejected" and rows["broken_R1.fastq"]["reason"] == reason
    assert rows["broken_R1.fastq"]["data-state"] == "rejected"
    assert f"<h3>{run}</h3>" in dom.stdout                       # grouped under their run folder
    assert 'id="throughput-chart"' in dom.stdout and 'class="bar"' in dom.stdout
    assert "test-key" not in dom.stdout
    assert taken.returncode == 0 and shot.stat().st_size > 10_000, taken.stderr[-2000:]
    print(f"status page screenshot: {shot}")


# -- over HTTP ---------------------------------------------------------------------------------

def _queued(store: SqliteStore, path: str, size: int = 1000) -> int:
    fid = store.add_seen(path, Identity(1, abs(hash(path)) % 10**9, size, 1))
    store.set_state(fid, "queued")
    return fid


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[tuple[SqliteStore, str]]:
    """A queue with a confirmed file and a rejected one in /srv/out/run_7 (made by the store's verbs)."""
    path = str(tmp_path / "queue.sqlite3")
    store = SqliteStore(path)
    done = _queued(store, "/srv/out/run_7/Data/Intensities/BaseCalls/s1_R1.fastq.gz", 5_000_000)
    store.claim_next("w")
    store.save_init(done, "0123456789abcdef", '{"upload_url": "https://s3", "fields": {"policy": "UE9MSUNZ"}}')
    store.mark_done(done, sample_id="0123456789abcdef", md5="d41d8cd98f00b204e9800998ecf8427e")
    rejected = _queued(store, "/srv/out/run_7/Data/Intensities/BaseCalls/s2_R1.fastq.gz")
    store.set_state(rejected, "rejected", error=REASON)
    yield store, path
    store.close()


@pytest.fixture
def page(queue: tuple[SqliteStore, str]) -> Iterator[StatusPage]:
    p = StatusPage(queue[1], "127.0.0.1:0", log=LOG, roots=["/srv/out"])
    p.start()
    yield p
    p.stop()


def test_the_page_shows_runs_files_counts_and_pause(page: StatusPage, queue: tuple[SqliteStore, str]) -> None:
    """Served as HTML with a strict policy (no script at all); the run, both files, the counts;
    then the pause with its reason once the gate records one."""
    answer = requests.get(f"http://127.0.0.1:{page.port}/", timeout=10)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/html")
    csp = answer.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "unsafe-inline" not in csp
    assert "<script" not in answer.text and 'http-equiv="refresh"' in answer.text
    parser = Rows()
    parser.feed(answer.text)
    by_file = {r["name"]: r for r in parser.rows}
    assert by_file["Data/Intensities/BaseCalls/s1_R1.fastq.gz"]["sample"] == "0123456789abcdef"
    assert by_file["Data/Intensities/BaseCalls/s2_R1.fastq.gz"]["reason"] == REASON
    assert "<h3>/srv/out/run_7</h3>" in answer.text and "Uploads: running" in answer.text
    assert 'data-state="done">1<' in answer.text and 'data-state="rejected">1<' in answer.text
    assert "UE9MSUNZ" not in answer.text and "https://s3" not in answer.text      # no upload fields

    queue[0].set_meta("paused", {"reason": "One Codex refused the API key (HTTP 401)", "since": time.time()})
    text = requests.get(f"http://127.0.0.1:{page.port}/", timeout=10).text
    assert "Uploads: PAUSED" in text and "One Codex refused the API key (HTTP 401)" in text


def test_every_value_is_escaped_and_secrets_are_scrubbed(tmp_path: Path) -> None:
    """A file name, a sample id and an error holding markup come out as text; a registered secret
    in an error is masked."""
    secret = "sk_live_0123456789abcdef0123"
    redact.register(secret)
    try:
        store = SqliteStore(str(tmp_path / "q.sqlite3"))
        evil = _queued(store, '/srv/out/<img src=x onerror=alert(1)>/"a".fastq')
        store.set_state(evil, "failed", error=f"HTTP 400: <b>bad</b> key={secret}",
                        sample_id='"><script>alert(2)</script>')
        page = StatusPage(store.path, "127.0.0.1:0", log=LOG)
        page.start()
        try:
            text = requests.get(f"http://127.0.0.1:{page.port}/", timeout=10).text
        finally:
            page.stop()
            store.close()
    finally:
        redact.reset()
    assert "<img" not in text and "<script>alert" not in text and "<b>bad</b>" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text and "&lt;b&gt;bad&lt;/b&gt;" in text
    assert "&quot;&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in text
    assert secret not in text and redact.MASK in text


def test_a_missing_queue_is_a_503_until_the_daemon_creates_it(tmp_path: Path) -> None:
    """Before the queue exists the page answers 503 and tries again; then it shows the queue."""
    path = tmp_path / "state" / "queue.sqlite3"
    page = StatusPage(str(path), "127.0.0.1:0", log=LOG)
    page.start()
    try:
        first = requests.get(f"http://127.0.0.1:{page.port}/", timeout=10)
        assert first.status_code == 503 and "cannot be read right now" in first.text
        assert not path.exists()                                  # the page never creates it
        path.parent.mkdir()
        store = SqliteStore(str(path))
        _queued(store, "/srv/out/run_1/a.fastq")
        second = requests.get(f"http://127.0.0.1:{page.port}/", timeout=10)
        store.close()
    finally:
        page.stop()
    assert second.status_code == 200 and "a.fastq" in second.text


def test_other_paths_are_404_head_works_and_stop_frees_the_port(page: StatusPage) -> None:
    """Only / is served; HEAD answers without a body; after stop() nothing listens."""
    base = f"http://127.0.0.1:{page.port}"
    assert requests.get(base + "/etc/passwd", timeout=10).status_code == 404
    assert requests.get(base + "/?x=1", timeout=10).status_code == 200
    head = requests.head(base + "/", timeout=10)
    assert head.status_code == 200 and head.content == b"" and int(head.headers["Content-Length"]) > 0
    page.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(base + "/", timeout=2)


def _config(tmp_path: Path, table: str) -> config.Settings:
    watch = tmp_path / "watch"
    watch.mkdir(exist_ok=True)
    path = tmp_path / "config.toml"
    path.write_text(f'[watch]\npaths = ["{watch}"]\n[queue]\npath = "{tmp_path}/queue.sqlite3"\n'
                    f"[status_page]\nenabled = true\n{table}")
    return config.load(str(path))


def test_basic_auth_on_a_network_address(tmp_path: Path, queue: tuple[SqliteStore, str]) -> None:
    """On 0.0.0.0 the page refuses a request without the password or with a wrong one (401 and a
    challenge) and serves it with the right one, from the systemd credential."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / CREDENTIAL_NAME).write_text("open sesame\n")
    settings = _config(tmp_path, 'listen = "0.0.0.0:0"\nusername = "lab"\n')
    page = build_status_page(settings, log=LOG, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert page is not None
    port = page.start()
    url = f"http://127.0.0.1:{port}/"
    try:
        bare = requests.get(url, timeout=10)
        wrong = requests.get(url, auth=("lab", "open sesame!"), timeout=10)
        other_user = requests.get(url, auth=("root", "open sesame"), timeout=10)
        garbage = requests.get(url, headers={"Authorization": "Basic %%%"}, timeout=10)
        right = requests.get(url, auth=("lab", "open sesame"), timeout=10)
    finally:
        page.stop()
    for refused in (bare, wrong, other_user, garbage):
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic realm=")
        assert "queue" not in refused.text.lower() and "fastq" not in refused.text
    assert right.status_code == 200 and "Runs" in right.text


def test_a_network_address_without_a_password_is_a_config_error(tmp_path: Path) -> None:
    """No password_file and no credential: building the page fails, naming the key and the fix; an
    empty password file too. StatusPage itself refuses to serve a network address without auth."""
    settings = _config(tmp_path, 'listen = "0.0.0.0:9809"\n')
    with pytest.raises(ConfigError) as e:
        build_status_page(settings, log=LOG, env={})
    assert e.value.key == "status_page.listen" and "status-page-password" in (e.value.fix or "")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        build_status_page(_config(tmp_path, 'listen = "0.0.0.0:9809"\npassword_file = "empty"\n'), log=LOG, env={})
    with pytest.raises(ValueError, match="needs a user name and password"):
        StatusPage(str(tmp_path / "q"), "192.0.2.1:9809", log=LOG)
    assert build_status_page(config.Settings(), log=LOG) is None                # off by default


def _tls_files(folder: Path) -> None:
    """cert.pem and key.pem for 127.0.0.1, issued by the CA in ca.pem (all made for the test)."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))


def test_https_with_the_configured_certificate(tmp_path: Path, queue: tuple[SqliteStore, str]) -> None:
    """With tls_cert_file and tls_key_file the page is HTTPS, verified against its CA, password included."""
    _tls_files(tmp_path)
    (tmp_path / "pw").write_text("s3cret")
    settings = _config(tmp_path, 'listen = "127.0.0.1:0"\npassword_file = "pw"\n'
                                 'tls_cert_file = "cert.pem"\ntls_key_file = "key.pem"\n')
    page = build_status_page(settings, log=LOG, env={})
    assert page is not None
    port = page.start()
    try:
        ok = requests.get(f"https://127.0.0.1:{port}/", auth=("seqdrop", "s3cret"), verify=str(tmp_path / "ca.pem"),
                          timeout=10)
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"https://127.0.0.1:{port}/", timeout=10)          # the system's CAs do not know it
    finally:
        page.stop()
    assert ok.status_code == 200 and "Runs" in ok.text


# -- what it groups and charts -----------------------------------------------------------------

def _row(i: int, path: str, state: str = "done", *, size: int = 100, at: float = 0.0) -> FileRow:
    return FileRow(id=i, path=path, identity=Identity(1, i, size, 1), state=state, step="", sample_id=None,
                   init=None, md5=None, attempts=0, next_attempt_at=0, error=None, stable_since=0, updated_at=at)


@pytest.mark.parametrize("path,run", [
    ("/srv/out/run_1/Data/Intensities/BaseCalls/a.fastq.gz", "/srv/out/run_1"),          # Illumina
    ("/srv/out/run_1/Analysis/1/Data/fastq/a.fastq.gz", "/srv/out/run_1"),
    ("/srv/out/exp/sample/20240101_FAQ1/fastq_pass/barcode01/a.fastq.gz", "/srv/out/exp/sample/20240101_FAQ1"),
    ("/srv/out/project_x/a.fastq.gz", "/srv/out/project_x"),                              # its own folder
    ("/srv/out/a.fastq", "/srv/out"),
    ("/srv/Data/run_2/b.fastq", "/srv/Data/run_2"),              # a root named like a run sub-folder
])
def test_run_folder_from_the_path_alone(path: str, run: str) -> None:
    """The run is the folder above Data/, Analysis/, fastq_pass/... below the watch root, else the file's folder."""
    assert run_folder(path, ["/srv/out", "/srv/Data/"]) == run


def test_runs_hold_the_latest_version_newest_run_first_within_limits() -> None:
    """A later version of a path replaces the earlier; runs sort by last change; files naturally;
    the limits say how much is left out."""
    rows = [_row(1, "/o/r1/s10.fq", "rejected", at=10), _row(2, "/o/r1/s2.fq", at=20), _row(3, "/o/r2/a.fq", at=30),
            _row(4, "/o/r1/s10.fq", "done", at=40), _row(5, "/o/r3/a.fq", at=5), _row(6, "/o/r1/s1.fq", at=1)]
    runs, hidden = group_runs(rows, ["/o"], max_runs=2, max_files=2)
    assert [r.folder for r in runs] == ["/o/r1", "/o/r2"] and hidden == 1
    assert [(f.path, f.state) for f in runs[0].files] == [("/o/r1/s1.fq", "done"), ("/o/r1/s2.fq", "done")]
    assert runs[0].hidden_files == 1 and runs[0].updated_at == 40


def test_throughput_buckets_per_minute_of_the_last_hour() -> None:
    """Done rows land in the minute they were confirmed; older ones and other states do not count."""
    now = 10_000.0
    rows = [_row(1, "/a", size=600, at=now), _row(2, "/b", size=60, at=now - 30), _row(3, "/c", size=7, at=now - 3599),
            _row(4, "/d", size=5, at=now - 3600), _row(5, "/e", "rejected", size=9, at=now - 10)]
    buckets = throughput_per_minute(rows, now)
    assert len(buckets) == 60 and buckets[-1] == 660 and buckets[0] == 7 and sum(buckets) == 667


def test_basic_auth_header_parsing() -> None:
    """Only Basic with the exact name and password passes; a password may hold a colon."""
    page = StatusPage("/nonexistent", "127.0.0.1:0", auth=("lab", "a:b c"), log=LOG)
    token = base64.b64encode(b"lab:a:b c").decode()
    assert page.authorized(f"Basic {token}") and page.authorized(f"basic {token}")
    for header in (None, "", f"Bearer {token}", "Basic " + base64.b64encode(b"lab:a:b").decode(),
                   "Basic " + base64.b64encode(b"lab").decode(), "Basic not-base64!"):
        assert not page.authorized(header), header
    assert StatusPage("/nonexistent", "127.0.0.1:0", log=LOG).authorized(None)



def test_a_client_that_hangs_up_or_speaks_plain_http_to_https_leaves_no_traceback(
        tmp_path: Path, queue: tuple[SqliteStore, str], capfd: pytest.CaptureFixture[str]) -> None:
    """Plain HTTP to the HTTPS page fails for that client only: no traceback on stderr, the page serves on."""
    _tls_files(tmp_path)
    settings = _config(tmp_path, 'listen = "127.0.0.1:0"\ntls_cert_file = "cert.pem"\ntls_key_file = "key.pem"\n')
    page = build_status_page(settings, log=LOG, env={})
    assert page is not None
    port = page.start()
    try:
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/", timeout=10)
        ok = requests.get(f"https://127.0.0.1:{port}/", verify=str(tmp_path / "ca.pem"), timeout=10)
    finally:
        page.stop()
    assert ok.status_code == 200
    assert "Traceback" not in capfd.readouterr().err
