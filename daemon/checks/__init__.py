"""Checks of content: the streaming FASTA/FASTQ validator and its child-process runner."""
