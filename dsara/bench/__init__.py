"""Benchmarks behind docs/speed.md, each run by a thin script in scripts/: the search step
(`search`), the training step (`train`), the seed methods (`methods`), bf16 vs fp32 (`precision`);
shared timing and publishing (`common`, `speed_doc`)."""
