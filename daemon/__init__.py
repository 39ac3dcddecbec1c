"""seqdrop: watch sequencer output folders and upload finished FASTA/FASTQ files to One Codex."""

__version__ = "0.1.0"
