"""The status page's HTML: one self-contained document, no script, every value escaped.

Kept apart from the server (statuspage.py) so that what the page says can be read, and tested,
without a socket. `esc` is the only way a value from the queue enters the page.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from daemon import redact
from daemon.queue.base import STATES, FileRow

if TYPE_CHECKING:        # statuspage imports this module; the types are for the checker only
    from daemon.operations.statuspage import Run, Snapshot

_CSS = """
body{font:15px/1.4 system-ui,sans-serif;margin:0 auto;max-width:72rem;padding:0 1rem 2rem;color:#1a1a1a}
header p,.note{color:#555}h1{margin:1rem 0 .2rem}h2{margin:1.6rem 0 .5rem}
h3{margin:1.2rem 0 .3rem;font-size:1rem;overflow-wrap:anywhere}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.25rem .5rem;vertical-align:top}
th{border-bottom:2px solid #ccc}td{border-bottom:1px solid #eee}td.num{text-align:right}
.num,.when{white-space:nowrap}
.name{overflow-wrap:break-word}.sample{font-family:ui-monospace,monospace}
#uploads{padding:.6rem 1rem;border-radius:.4rem}#uploads.running{background:#e7f6ea}
#uploads.paused{background:#fde8e8;border:2px solid #c62828}
.state{font-weight:600}.done .state{color:#1b7f3b}.rejected .state,.failed .state{color:#c62828}
.uploading .state{color:#1565c0}.vanished .state{color:#777}.reason{color:#8a1c1c}
#counts td{font-size:1.3rem}svg{width:100%;max-width:56rem;height:auto}.bar{fill:#1565c0}.axis{stroke:#999}
svg text{font-size:11px;fill:#555}
"""
CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'sha256-"
                           + base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()
                           + "'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_SVG_W, _SVG_H, _LEFT, _BOTTOM, _TOP = 720, 200, 64, 28, 12


def esc(value: Any) -> str:
    """A value as HTML text: control characters (and a file name's undecodable bytes, lone
    surrogates here) shown escaped, then &, <, >, " and ' escaped."""
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return html.escape(redact.escape_control(text), quote=True)


def page(snap: Snapshot, *, hostname: str, version: str, refresh_s: int) -> str:
    parts = [_head(f"seqdrop on {hostname}", refresh_s),
             (f'<header><h1>seqdrop on <span id="host">{esc(hostname)}</span></h1>'
              f"<p>seqdrop {esc(version)} · as of {esc(_clock(snap.now))} · this page reloads every "
              f"{refresh_s} s · it only reads</p></header>"),
             _uploads(snap.paused), _counts(snap.counts), _throughput(snap.per_minute, snap.now),
             '<section id="runs"><h2>Runs</h2>']
    if not snap.runs:
        parts.append('<p class="note">No files yet.</p>')
    parts += [run_section(run) for run in snap.runs]
    if snap.hidden_runs:
        parts.append(f'<p class="note">{snap.hidden_runs} older run(s) not shown: '
                     "<code>seqdrop status</code> lists every file.</p>")
    parts.append("</section></body></html>\n")
    return "\n".join(parts)


def unavailable_page(hostname: str, version: str, store_path: str, now: float, *, refresh_s: int) -> str:
    return (_head(f"seqdrop on {hostname}", refresh_s)
            + f"<header><h1>seqdrop on {esc(hostname)}</h1><p>seqdrop {esc(version)} · as of "
            f"{esc(_clock(now))}</p></header><p>The queue ({esc(store_path)}) cannot be read right now: "
            "seqdrop may be starting. This page tries again by itself.</p></body></html>\n")


def message_page(text: str) -> str:
    return _head("seqdrop", None) + f"<p>{esc(text)}</p></body></html>\n"


def _head(title: str, refresh_s: int | None) -> str:
    refresh = f'<meta http-equiv="refresh" content="{int(refresh_s)}">' if refresh_s else ""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{refresh}'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>")


def _uploads(paused: Mapping[str, Any] | None) -> str:
    if not paused:
        return '<section id="uploads" class="running"><h2>Uploads: running</h2></section>'
    since = paused.get("since")
    when = f" since {esc(_clock(since))}" if isinstance(since, (int, float)) else ""
    return (f'<section id="uploads" class="paused"><h2>Uploads: PAUSED{when}</h2>'
            f'<p class="reason">{esc(redact.scrub(str(paused.get("reason") or "")))}</p>'
            "<p>Nothing is lost: files wait in the queue, and seqdrop resumes by itself once One Codex "
            "accepts its API key again. Tell whoever looks after seqdrop.</p></section>")


def _counts(counts: Mapping[str, int]) -> str:
    states = [*STATES, *(s for s in counts if s not in STATES)]
    head = "".join(f"<th>{esc(s)}</th>" for s in states)
    cells = "".join(f'<td class="num {esc(s)}" data-state="{esc(s)}">{int(counts.get(s, 0))}</td>' for s in states)
    return (f'<section id="counts"><h2>Files by state</h2><table><tr>{head}</tr><tr>{cells}</tr></table>'
            '<p class="note">Every version of every file the queue holds.</p></section>')


def _throughput(per_minute: list[int], now: float) -> str:
    total = sum(per_minute)
    rate = total / (len(per_minute) * 60) if per_minute else 0.0
    return ('<section id="throughput"><h2>Upload throughput, last hour</h2>' + chart(per_minute, now)
            + f'<p class="note">{esc(_bytes(total))} confirmed in the last hour, {esc(_rate(rate))} on '
            "average. Each file counts in the minute One Codex confirmed it.</p></section>")


def chart(per_minute: list[int], now: float) -> str:
    """An inline SVG bar chart: the average rate of each minute (bytes confirmed ÷ 60 s)."""
    rates = [b / 60 for b in per_minute]
    top, unit, divisor = _scale(max(rates, default=0.0))
    plot_w, plot_h = _SVG_W - _LEFT - 8, _SVG_H - _BOTTOM - _TOP
    bar_w = plot_w / max(1, len(rates))
    out = [(f'<svg id="throughput-chart" viewBox="0 0 {_SVG_W} {_SVG_H}" width="{_SVG_W}" height="{_SVG_H}" '
            'role="img" aria-labelledby="chart-title" xmlns="http://www.w3.org/2000/svg">'),
           f'<title id="chart-title">Upload rate per minute over the last hour, in {unit}</title>']
    for frac in (0, 0.5, 1):
        y = _TOP + plot_h * (1 - frac)
        out.append(f'<line class="axis" x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{top * frac:g} {unit}</text>')
    minute0 = now - len(rates) * 60
    for i, r in enumerate(rates):
        if r <= 0:
            continue
        h = max(1.0, plot_h * (r / divisor) / top)
        x = _LEFT + i * bar_w
        label = f"{time.strftime('%H:%M', time.localtime(minute0 + (i + 1) * 60))}: {_rate(r)} ({_bytes(per_minute[i])})"
        out.append(f'<rect class="bar" x="{x + 0.5:.1f}" y="{_TOP + plot_h - h:.1f}" width="{max(1.0, bar_w - 1):.1f}" '
                   f'height="{h:.1f}"><title>{esc(label)}</title></rect>')
    for minutes_ago in (60, 45, 30, 15, 0):
        x = _LEFT + plot_w * (1 - minutes_ago / 60)
        text = "now" if minutes_ago == 0 else f"−{minutes_ago} min"
        anchor = "end" if minutes_ago == 0 else "middle"
        out.append(f'<text x="{x:.1f}" y="{_SVG_H - 8}" text-anchor="{anchor}">{text}</text>')
    out.append("</svg>")
    return "".join(out)


def run_section(run: Run) -> str:
    """One run: its folder, its files by state, and a row per file (the latest version of each)."""
    by_state: dict[str, int] = {}
    for row in run.files:
        by_state[row.state] = by_state.get(row.state, 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(by_state.items()))
    rows = "".join(_file_row(row, run.folder) for row in run.files)
    more = (f'<p class="note">and {run.hidden_files} more file(s): <code>seqdrop status</code> lists them.</p>'
            if run.hidden_files else "")
    return (f'<section class="run"><h3>{esc(run.folder)}</h3><p class="note">{esc(summary)} · last change '
            f"{esc(_clock(run.updated_at))}</p><table class=\"files\"><thead><tr><th>File</th><th>State</th>"
            "<th>Size</th><th>Sample id</th><th>Reason or note</th><th>Updated</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>{more}</section>")


def _file_row(row: FileRow, folder: str) -> str:
    name = os.path.relpath(row.path, folder) if row.path.startswith(folder.rstrip("/") + "/") else row.path
    # The servers' words (and our own notes) may quote what they were sent: scrubbed of secrets.
    note = redact.scrub(row.error) if row.error else ""
    return (f'<tr class="{esc(row.state)}" data-state="{esc(row.state)}" data-id="{row.id}">'
            f'<td class="name" title="{esc(row.path)}">{esc(name)}</td><td class="state">{esc(row.state)}</td>'
            f'<td class="num">{esc(_bytes(row.size))}</td><td class="sample">{esc(row.sample_id or "")}</td>'
            f'<td class="reason">{esc(note)}</td><td class="when">{esc(_clock(row.updated_at, short=True))}</td></tr>')


# -- numbers for people --------------------------------------------------------------------------

def _scale(max_rate: float) -> tuple[float, str, float]:
    """(axis top in the unit, the unit, bytes/s per unit) for a chart whose highest bar is max_rate."""
    for divisor, unit in ((1e9, "GB/s"), (1e6, "MB/s"), (1e3, "kB/s")):
        if max_rate >= divisor:
            break
    else:
        divisor, unit = 1.0, "B/s"
    value = max_rate / divisor
    for step in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000):
        if value <= step:
            return float(step), unit, divisor
    return float(value), unit, divisor


def _bytes(n: float) -> str:
    for divisor, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= divisor:
            return f"{n / divisor:.1f} {unit}"
    return f"{int(n)} B"


def _rate(bytes_per_s: float) -> str:
    return _bytes(bytes_per_s) + "/s"


def _clock(ts: float, *, short: bool = False) -> str:
    """Local time, as the lab reads its clocks (the page's header names the time zone)."""
    return time.strftime("%Y-%m-%d %H:%M" if short else "%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))
