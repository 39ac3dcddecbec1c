"""Write seqdrop's own labelled FASTA/FASTQ corpus: valid/, invalid/ and expected.tsv.

Run from anywhere: ``python tests/data/fastx/make_corpus.py``. The output is deterministic
(fixed seed, gzip mtime 0), so re-running it leaves git clean. expected.tsv maps each
invalid file to a phrase its rejection message must contain.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
import struct
import zipfile
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
RNG = random.Random(20261125)


def reads(n: int, length: int = 30, *, lower: bool = False, start: int = 1) -> list[tuple[bytes, bytes, bytes]]:
    """n (title, sequence, quality) triples."""
    out = []
    for i in range(start, start + n):
        seq = bytes(RNG.choice(b"ACGTN") for _ in range(length))
        if lower:
            seq = seq.lower()
        qual = bytes(RNG.randrange(33, 74) for _ in range(length))
        out.append((b"read%d desc=x" % i, seq, qual))
    return out


def fastq(recs, *, nl: bytes = b"\n", wrap: int = 0, repeat_title: bool = False,
          final_newline: bool = True) -> bytes:
    lines = []
    for title, seq, qual in recs:
        lines.append(b"@" + title)
        lines += chop(seq, wrap)
        lines.append(b"+" + title if repeat_title else b"+")
        lines += chop(qual, wrap)
    text = nl.join(lines) + nl
    return text if final_newline else text[:-len(nl)]


def chop(s: bytes, width: int) -> list[bytes]:
    if not width or not s:
        return [s]
    return [s[i:i + width] for i in range(0, len(s), width)]


def fasta(recs, *, nl: bytes = b"\n", wrap: int = 60) -> bytes:
    lines = []
    for title, seq, _ in recs:
        lines.append(b">" + title)
        if seq:
            lines += chop(seq, wrap)
    return nl.join(lines) + nl


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def multi_gz(data: bytes, parts: int) -> bytes:
    step = max(1, len(data) // parts)
    return b"".join(gz(data[i:i + step]) for i in range(0, len(data), step))


def bgzf_block(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    deflated = c.compress(data) + c.flush()
    header = struct.pack("<4BI2BH2BHH", 0x1F, 0x8B, 8, 4, 0, 0, 0xFF, 6, 66, 67, 2,
                         len(deflated) + 25)
    return header + deflated + struct.pack("<II", zlib.crc32(data), len(data))


def bgzf(data: bytes, block: int = 100, eof: bool = True) -> bytes:
    out = b"".join(bgzf_block(data[i:i + block]) for i in range(0, len(data), block))
    return out + (bgzf_block(b"") if eof else b"")


def bz(data: bytes) -> bytes:
    return bz2.compress(data, 9)


def zipped(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def corpus() -> tuple[dict[str, bytes], dict[str, tuple[bytes, str]]]:
    """(valid files, invalid files with the phrase their rejection must contain)."""
    base = reads(6)
    text = fastq(base)
    wrapped = fastq(reads(4, 95), wrap=20)
    valid = {
        "plain.fastq": text,
        "plain.fasta": fasta(reads(3, 150)),
        "gzip.fastq.gz": gz(text),
        "multimember.fastq.gz": multi_gz(text, 4),
        "bgzf.fastq.gz": bgzf(text),
        "bzip2.fastq.bz2": bz(text),
        "multistream.fastq.bz2": bz(text[:200]) + bz(text[200:]),
        "gzip.fasta.gz": gz(fasta(reads(3, 150))),
        "wrapped.fastq": wrapped,
        # Quality lines starting with '@' and '+' in a wrapped record (tricky.fastq-like).
        "wrapped_at_plus.fastq": b"@r1\nACGTA\nCGT\n+\n@@+II\n+@I\n@r2\nAC\n+r2\n@+\n",
        "wrapped.fastq.gz": gz(wrapped),
        "crlf.fastq": fastq(base, nl=b"\r\n"),
        "crlf.fasta": fasta(reads(2, 70), nl=b"\r\n"),
        "crlf_no_final_newline.fastq": fastq(base, nl=b"\r\n", final_newline=False),
        "no_final_newline.fastq": fastq(base, final_newline=False),
        "no_final_newline.fasta": fasta(reads(2))[:-1],
        "zero_length.fastq": fastq(reads(2) + [(b"empty", b"", b"")] + reads(2, start=4)),
        "zero_length_last.fastq": fastq(reads(2) + [(b"empty", b"", b"")]),
        # Decision: a zero-length record whose (empty) quality line lost its newline.
        "zero_length_no_quality_line_at_eof.fastq": b"@r1\nAC\n+\nII\n@r2\n\n+\n",
        "lowercase.fastq": fastq(reads(3, lower=True)),
        "symbols.fastq": b"@r1\nAC*-.nRYKx\n+\n!!~~IIII##\n",
        "plus_repeats_title.fastq": fastq(base, repeat_title=True),
        "trailing_blank_line.fastq": text + b"\n",
        # Decision: any number of blank lines at the very end is tolerated.
        "trailing_blank_lines.fastq": text + b"\n\n\r\n",
        "empty_records.fasta": b">a\n>b\nACGT\n>c\n",
        "blank_lines.fasta": b">a\nACGT\n\n>b\n\nAC\nGT\n\n",
        "protein.fasta": b">p1 some protein\nMKVLA*\nGGHVNPAVTFGAFVGG-NITLLRG\n",
        "oddly_named.txt": text,
        "long_line.fasta": b">chr1\n" + bytes(RNG.choice(b"ACGT") for _ in range(5000)) + b"\n",
        "single_record_long_read.fastq.gz": gz(fastq(reads(1, 20000))),
    }
    zero_tail = bytearray(text)
    zero_tail[-40:] = bytes(40)
    corrupt_crc = bytearray(gz(text))
    corrupt_crc[-8] ^= 0xFF
    corrupt_deflate = bytearray(gz(text * 4))
    corrupt_deflate[len(corrupt_deflate) // 2] ^= 0x55
    zstd_like = bytes.fromhex("28b52ffd") + bytes(RNG.randrange(256) for _ in range(60))
    invalid = {
        "empty.fastq": (b"", "is empty"),
        "empty.fastq.gz": (gz(b""), "decompresses to nothing"),
        "empty.fastq.bz2": (bz(b""), "decompresses to nothing"),
        "binary_junk.fastq": (bytes(RNG.randrange(256) for _ in range(300)) + b"\0", "binary"),
        "png.fasta": (b"\x89PNG\r\n\x1a\n" + bytes(100), "binary"),
        "text_not_fastq.fastq": (b"sample,reads\nA,1\n", "instead of '>'"),
        "leading_blank_line.fastq": (b"\n" + text, "instead of '>'"),
        "sam_header.fastq": (b"@HD\tVN:1.6\n@SQ\tSN:chr1\tLN:10\n", "SAM"),
        "bom.fasta": (b"\xef\xbb\xbf>a\nACGT\n", "byte-order mark"),
        "trunc_in_title.fastq": (text + b"@read7 de", "ends before"),
        "trunc_after_title.fastq": (text + b"@read7\n", "ends before"),
        "trunc_in_seq.fastq": (text + b"@read7\nACG", "ends before"),
        "trunc_after_seq.fastq": (text + b"@read7\nACGT\n", "ends before"),
        "trunc_in_plus.fastq": (fastq(base, repeat_title=True) + b"@read7\nACGT\n+rea", "ends inside"),
        "trunc_after_plus.fastq": (text + b"@read7\nACGT\n+\n", "ends after 0 of 4"),
        "trunc_in_qual.fastq": (text + b"@read7\nACGT\n+\nII", "ends after 2 of 4"),
        "trunc_in_wrapped_qual.fastq": (wrapped[:-30], "truncated"),
        "qual_space.fastq": (text + b"@r\nACGT\n+\nI II\n", "a space"),
        "qual_tab.fastq": (text + b"@r\nACGT\n+\nI\tII\n", "a tab"),
        "qual_del.fastq": (text + b"@r\nACGT\n+\nII\x7fI\n", "DEL"),
        "qual_control.fastq": (text + b"@r\nACGT\n+\nII\x01I\n", "control character 0x01"),
        "qual_nul.fastq": (text + b"@r\nACGT\n+\nII\x00I\n", "NUL"),
        "qual_non_ascii.fastq": (text + b"@r\nACGT\n+\nII\xc3I\n", "non-ASCII"),
        "qual_longer.fastq": (text + b"@r\nACGT\n+\nIIIII\n", "quality has 5 characters but the sequence has 4"),
        "qual_shorter.fastq": (b"@r\nACGT\n+\nIII\n" + text, "quality has 3 characters but the sequence has 4"),
        "plus_mismatch.fastq": (b"@r1\nACGT\n+r2\nIIII\n", "different title"),
        "seq_space.fastq": (b"@r\nAC GT\n+\nIIIII\n", "a space"),
        "seq_tab.fastq": (b"@r\nAC\tGT\n+\nIIIII\n", "a tab"),
        "seq_digit.fastq": (b"@r\nAC1GT\n+\nIIIII\n", "'1'"),
        "double_seq.fastq": (b"@r\nACGT\n@r\nACGT\n+\nIIII\n", "before this record's '+'"),
        "double_qual.fastq": (b"@r\nACGT\n+\nIIII\n+\nIIII\n", "expected a title"),
        "missing_qual.fastq": (b"@r1\nACGT\n+\n\n@r2\nACGT\n+\n\n", "quality has 0 characters"),
        "blank_line_between_records.fastq": (fastq(base[:2]) + b"\n" + fastq(base[2:]), "blank"),
        "title_nul.fastq": (b"@r\x00\nACGT\n+\nIIII\n", "NUL"),
        "zero_filled_tail.fastq": (bytes(zero_tail), "NUL"),
        "crlf_trunc_in_qual.fastq": (fastq(base, nl=b"\r\n") + b"@r\r\nACGT\r\n+\r\nII\r", "ends after 2 of 4"),
        "truncated.fastq.gz": (gz(text)[:-20], "truncated"),
        "truncated_header.fastq.gz": (gz(text)[:12], "truncated"),
        "corrupt_crc.fastq.gz": (bytes(corrupt_crc), "corrupt"),
        "corrupt_deflate.fastq.gz": (bytes(corrupt_deflate), "corrupt"),
        "trailing_garbage.fastq.gz": (gz(text) + b"garbage!", "not gzip"),
        "trailing_zeros.fastq.gz": (gz(text) + bytes(512), "zero bytes"),
        "bgzf_without_eof.fastq.gz": (bgzf(text, eof=False), "end-of-file marker"),
        "truncated_member.fastq.gz": (multi_gz(text, 3)[:-10], "truncated"),
        "gzip_of_truncated_fastq.fastq.gz": (gz(text[:-7]), "truncated"),
        "truncated.fastq.bz2": (bz(text)[:-10], "truncated"),
        "trailing_garbage.fastq.bz2": (bz(text) + b"junk", "not bzip2"),
        "zip_named_gz.fastq.gz": (zipped("reads.fastq", text), "ZIP"),
        "xz_named_gz.fastq.gz": (lzma.compress(text), "xz"),
        "zstd_named_gz.fastq.gz": (zstd_like, "zstd"),
        "bam_named_gz.fastq.gz": (bgzf(b"BAM\x01" + bytes(40)), "BAM"),
        "fasta_text_before_header.fasta": (b"Some header\n>a\nACGT\n", "instead of '>'"),
        "fasta_comment.fasta": (b">a\nACGT\n;comment\nACGT\n", "comment line"),
        "fasta_space.fasta": (b">a\nACGT ACGT\n", "a space"),
        "fasta_nul_header.fasta": (b">a\nACGT\n>b\x00\nAC\n", "NUL"),
        "fasta_with_fastq_record.fasta": (b">a\nACGT\n@r\nACGT\n", "'@'"),
    }
    return valid, invalid


def main() -> None:
    valid, invalid = corpus()
    for sub in ("valid", "invalid"):
        folder = HERE / sub
        folder.mkdir(exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
    for name, data in valid.items():
        (HERE / "valid" / name).write_bytes(data)
    lines = ["# invalid file\tphrase its rejection message must contain"]
    for name, (data, phrase) in invalid.items():
        (HERE / "invalid" / name).write_bytes(data)
        lines.append(f"{name}\t{phrase}")
    (HERE / "expected.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
