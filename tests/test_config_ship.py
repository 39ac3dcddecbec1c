"""The configuration that ships seqdrop to a lab: e-mail ([notify] email_*) and the status page
([status_page]); their defaults, and a clear error (exit 2, the key and the fix) for each mistake."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from harness import ROOT, daemon_env

from daemon import config
from daemon.config.notify import EMAIL_DEFAULT_PORTS
from daemon.errors import ConfigError

MAIL = 'email_to = ["sequencing@lab.example.org"]\nemail_from = "seqdrop@lab.example.org"\n'


def _load(tmp_path: Path, tables: str) -> config.Settings:
    watch = tmp_path / "watch"
    watch.mkdir(exist_ok=True)
    path = tmp_path / "config.toml"
    path.write_text(f'[watch]\npaths = ["{watch}"]\n[queue]\npath = "{tmp_path}/q.sqlite3"\n{tables}')
    return config.load(str(path))


def test_email_is_off_by_default_and_on_with_recipients(tmp_path: Path) -> None:
    """No email_to: no e-mail. With it: the addresses, the server, STARTTLS on 587, no login; a
    password file relative to the config file's folder."""
    off = _load(tmp_path, "").notify
    assert not off.email_enabled and off.email_to == () and off.email_smtp_port is None
    on = _load(tmp_path, '[notify]\nemail_to = ["a@lab.example.org", "b@lab.example.org"]\n'
                         'email_from = "seqdrop@lab.example.org"\nemail_smtp_host = "smtp.lab.example.org"\n').notify
    assert on.email_enabled and on.email_to == ("a@lab.example.org", "b@lab.example.org")
    assert (on.email_smtp_host, on.email_smtp_port, on.email_security) == ("smtp.lab.example.org", 587, "starttls")
    assert on.email_username is None and on.email_password_file is None
    login = _load(tmp_path, f'[notify]\n{MAIL}email_smtp_host = "smtp.lab.example.org"\n'
                            'email_username = "seqdrop"\nemail_password_file = "secrets/smtp"\n').notify
    assert login.email_username == "seqdrop" and login.email_password_file == str(tmp_path / "secrets" / "smtp")


@pytest.mark.parametrize("security,host,port", [("starttls", "smtp.example.org", 587), ("tls", "smtp.example.org", 465),
                                                ("none", "localhost", 25), ("none", "::1", 25)])
def test_the_port_follows_the_security_unless_given(tmp_path: Path, security: str, host: str, port: int) -> None:
    """587 for STARTTLS, 465 for TLS, 25 for a relay on this machine; an explicit port wins."""
    table = f'[notify]\n{MAIL}email_smtp_host = "{host}"\nemail_security = "{security}"\n'
    assert _load(tmp_path, table).notify.email_smtp_port == port == EMAIL_DEFAULT_PORTS[security]
    assert _load(tmp_path, table + "email_smtp_port = 2525\n").notify.email_smtp_port == 2525


@pytest.mark.parametrize("table,key,words", [
    ('email_smtp_host = "smtp.x.org"\n', "notify.email_smtp_host", "email_to is not"),
    ('email_to = "a@x.org"\n', "notify.email_to", "wrong type"),
    ('email_to = ["a@x.org", "Ann <ann@x.org>"]\nemail_from = "s@x.org"\nemail_smtp_host = "h"\n',
     "notify.email_to[1]", "not a plain e-mail address"),
    ('email_to = ["a@x.org", 3]\n', "notify.email_to[1]", "must be a string"),
    ('email_to = ["ax.org"]\n', "notify.email_to[0]", "not an e-mail address"),
    ('email_to = ["a@x.org"]\nemail_smtp_host = "h"\n', "notify.email_from", "is needed"),
    ('email_to = ["a@x.org"]\nemail_from = "s@x.org"\n', "notify.email_smtp_host", "is needed"),
    (f'{MAIL}email_smtp_host = "smtp.x.org:587"\n', "notify.email_smtp_host", "port goes in email_smtp_port"),
    (f'{MAIL}email_smtp_host = "smtp://x.org"\n', "notify.email_smtp_host", "not a host name"),
    (f'{MAIL}email_smtp_host = "h"\nemail_security = "ssl"\n', "notify.email_security", "unknown value"),
    (f'{MAIL}email_smtp_host = "smtp.x.org"\nemail_security = "none"\n', "notify.email_security", "unencrypted"),
    (f'{MAIL}email_smtp_host = "h"\nemail_smtp_port = 0\n', "notify.email_smtp_port", "not a TCP port"),
    (f'{MAIL}email_smtp_host = "h"\nemail_smtp_port = "587"\n', "notify.email_smtp_port", "wrong type"),
    (f'{MAIL}email_smtp_host = "h"\nemail_password_file = "/p"\n', "notify.email_password_file", "needs a user name"),
    (f'{MAIL}email_smtp_host = "h"\nemail_pasword_file = "/p"\n', "notify", "email_pasword_file"),
])
def test_email_mistakes_name_the_key_and_the_fix(tmp_path: Path, table: str, key: str, words: str) -> None:
    """Each mistake in the email_* keys is a ConfigError naming the key, what is wrong, and a fix."""
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, "[notify]\n" + table)
    assert e.value.key == key and words in str(e.value) and e.value.fix


def test_status_page_defaults_and_settings(tmp_path: Path) -> None:
    """Off, on 127.0.0.1:9809, user seqdrop, no password file, no TLS; files relative to the config."""
    sp = _load(tmp_path, "").status_page
    assert (sp.enabled, sp.listen, sp.username, sp.password_file, sp.tls_cert_file) == (
        False, "127.0.0.1:9809", "seqdrop", None, None)
    sp = _load(tmp_path, '[status_page]\nenabled = true\nlisten = "0.0.0.0:8080"\nusername = "lab"\n'
                         'password_file = "pw"\ntls_cert_file = "c.pem"\ntls_key_file = "/etc/k.pem"\n').status_page
    assert sp.enabled and sp.listen == "0.0.0.0:8080" and sp.username == "lab"
    assert (sp.password_file, sp.tls_cert_file, sp.tls_key_file) == (str(tmp_path / "pw"), str(tmp_path / "c.pem"),
                                                                     "/etc/k.pem")


@pytest.mark.parametrize("table,key,words", [
    ('listen = "9809"\n', "status_page.listen", "HOST:PORT"),
    ('listen = "127.0.0.1:99999"\n', "status_page.listen", "HOST:PORT"),
    ('username = "a:b"\n', "status_page.username", "cannot be a basic-auth user name"),
    ('username = ""\n', "status_page.username", "cannot be a basic-auth user name"),
    ('tls_cert_file = "c.pem"\n', "status_page.tls_key_file", "is needed too"),
    ('tls_key_file = "k.pem"\n', "status_page.tls_cert_file", "is needed too"),
    ("enabled = 1\n", "status_page.enabled", "wrong type"),
    ('pasword_file = "p"\n', "status_page", "pasword_file"),
])
def test_status_page_mistakes_name_the_key_and_the_fix(tmp_path: Path, table: str, key: str, words: str) -> None:
    """Each mistake in [status_page] is a ConfigError naming the key and a fix."""
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, "[status_page]\n" + table)
    assert e.value.key == key and words in str(e.value) and e.value.fix


def test_a_mistake_is_exit_2_with_the_key_and_the_fix_and_no_traceback(tmp_path: Path) -> None:
    """`seqdrop status` on a config sending mail unencrypted across the network: exit 2, one message."""
    _load(tmp_path, "")
    path = tmp_path / "config.toml"
    path.write_text(path.read_text() + f'[notify]\n{MAIL}email_smtp_host = "smtp.x.org"\nemail_security = "none"\n')
    done = subprocess.run([sys.executable, "-m", "daemon", "status", "--config", str(path)], cwd=ROOT,
                          env=daemon_env(), capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "[notify.email_security]" in done.stderr and "fix:" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_example_config_documents_every_new_key(tmp_path: Path) -> None:
    """config.example.toml names each [notify] email_* key and each [status_page] key, and loads
    with them uncommented (watch folder aside)."""
    text = (ROOT / "config.example.toml").read_text()
    for section in ("notify", "status_page"):
        for key in getattr(config.Settings(), section).__dataclass_fields__:
            assert f"\n{key} =" in text or f"\n# {key} =" in text, f"[{section}] {key} undocumented"
    watch = tmp_path / "out"
    watch.mkdir()
    uncommented = "\n".join(line[2:] if line.startswith(("# email_", "# password_file", "# tls_")) else line
                            for line in text.replace("/srv/sequencer/output", str(watch)).splitlines())
    path = tmp_path / "config.toml"
    path.write_text(uncommented)
    settings = config.load(str(path))
    assert settings.notify.email_enabled and settings.status_page.password_file


def test_the_documented_snippets_load(tmp_path: Path) -> None:
    """Every [notify] e-mail and [status_page] example in docs/operations.md and README.md is valid."""
    blocks = [b for doc in ("docs/operations.md", "README.md")
              for b in re.findall(r"```toml\n(.*?)```", (ROOT / doc).read_text(), flags=re.DOTALL)
              if "email_to" in b or "[status_page]" in b]
    assert len(blocks) >= 4
    for block in blocks:
        tables = re.split(r"^(?=\[)", block, flags=re.MULTILINE)
        mine = "".join(t for t in tables if t.startswith(("[notify]", "[status_page]")))
        settings = _load(tmp_path, mine)
        assert settings.notify.email_enabled or settings.status_page.enabled, block
