"""Where a large upload is validated (issue 16): in the sending process with numpy's checker when the file
is FASTQ of one read length (no second read, no second process), in a child process otherwise."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from test_upload import Harness, fastq_bytes

from daemon.checks import fastq_blocks
from daemon.checks.validate import blocks_carry
from daemon.sandbox import Sandbox
from daemon.upload import pipeline as pipeline_module

KEY = "sk_test_0123456789abcdef"


def varied_fastq(n: int = 2000) -> bytes:
    """Reads of several lengths (trimmed Illumina, long reads): the numpy checker does not carry them."""
    return b"".join(b"@v%d\n%s\n+\n%s\n" % (i, b"ACGT"[i % 4:i % 4 + 1] * (60 + i % 7), b"I" * (60 + i % 7))
                    for i in range(n))


def test_blocks_carry_names_fastq_of_one_read_length_plain_or_gzip() -> None:
    uniform = fastq_bytes(2000)
    assert blocks_carry(uniform) and blocks_carry(gzip.compress(uniform))
    assert not blocks_carry(varied_fastq())
    assert not blocks_carry(uniform.replace(b"\n", b"\r\n"))        # CRLF: the exact parser's work
    assert not blocks_carry(b">s1\nACGT\n" * 5000)                   # FASTA
    assert not blocks_carry(fastq_bytes(3))                            # too few records to tell
    assert not blocks_carry(uniform.replace(b"\n+\n", b"\n+r\n", 1))  # a '+' line with a title


@pytest.fixture
def h(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Every file takes the large-file route; the validator processes started are counted."""
    monkeypatch.setattr(pipeline_module, "CHILD_VALIDATION_BYTES", 1)
    started: list[str] = []
    real = pipeline_module.ChildValidator

    def counting(path: str, size: int) -> object:
        started.append(path)
        return real(path, size)

    monkeypatch.setattr(pipeline_module, "ChildValidator", counting)
    with Sandbox(api_keys=(KEY,)) as sb:
        harness = Harness(sb, tmp_path)
        harness.pipeline.block_size = 1 << 20   # blocks large enough for numpy's checker (BLOCKS_FROM)
        harness.children = started
        yield harness
        harness.store.close()


@pytest.mark.parametrize("gz", [False, True])
def test_fastq_of_one_read_length_is_validated_in_the_sending_process(h, gz: bool,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    proven: list[int] = []
    real_scan = fastq_blocks.scan

    def scan(text: bytes, start: int, newlines: fastq_blocks.Newlines | None = None) -> tuple[int, int, int]:
        end, records, bases = real_scan(text, start, newlines)
        proven.append(records)
        return end, records, bases

    monkeypatch.setattr(fastq_blocks, "scan", scan)
    data = fastq_bytes(3000)
    data = gzip.compress(data) if gz else data
    state, _ = h.upload("reads.fastq" + (".gz" if gz else ""), data)
    assert state == "done" and h.children == []
    assert sum(proven) > 2000        # numpy's checker did the work, in this process
    assert Path(h.confirmed()[0]["object_path"]).read_bytes() == data


def test_a_bad_base_deep_in_the_file_is_refused_in_the_sending_process(h) -> None:
    """Refused by the in-process validator with the exact parser's message; S3 keeps nothing."""
    lines = fastq_bytes(3000).split(b"\n")
    lines[4 * 2500 + 1] = b"ACGT!" + lines[4 * 2500 + 1][5:]
    state, file_id = h.upload("bad.fastq", b"\n".join(lines))
    assert state == "rejected" and h.children == []
    assert "record 2,501" in h.store.get(file_id).error and "'!'" in h.store.get(file_id).error
    assert not h.requests_to("confirm_upload")
    assert all(s["object_path"] is None for s in h.sb.samples())


def test_reads_of_several_lengths_are_validated_in_a_child_process(h) -> None:
    data = varied_fastq()
    state, _ = h.upload("varied.fastq", data)
    assert state == "done" and len(h.children) == 1
    assert Path(h.confirmed()[0]["object_path"]).read_bytes() == data
