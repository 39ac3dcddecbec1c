"""Assembly: finished file versions → One Codex samples (design.md, "Samples (turn 2)").

A room of pure parts the daemon can be wired to later (nothing here touches the queue, the
service or the network):
- `names`: what a file name says (sample stem, R1/R2/index, lane, format, compression, how sure);
- `group`: members of one folder → single-end or paired samples, and when each is complete;
- `pairs`: the pair check (read-name digest and record count, compared);
- `concat`: several lane files read as one stream, size known up front, one MD5.
"""
