"""The [queue] table: where the SQLite queue lives. (Its place beside the watch folders is checked
once both tables are read: see document.py.)"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.config.reader import Section


@dataclass(frozen=True)
class QueueSettings:
    path: str = "/var/lib/seqdrop/queue.sqlite3"


def parse_queue(s: Section) -> QueueSettings:
    return QueueSettings(path=s.path(s.get("path", QueueSettings.path, str,
                                           fix='path = "/var/lib/seqdrop/queue.sqlite3"')))
