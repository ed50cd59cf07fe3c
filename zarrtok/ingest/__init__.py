"""Ingest: documents from datasets / JSON Lines sources, tokenizers and verified encoders, the shard
writer, and ``build()``. Never imports torch itself (``transformers`` may, when a tokenizer is loaded)."""
