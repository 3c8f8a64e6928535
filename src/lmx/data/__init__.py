"""Text to batched token streams: where the text comes from (sources.py), the tokenizer
(tokenizer.py), the on-disk token cache (cache.py), the tutorial's batchify and bptt slicing
(batching.py), and `streams`, which every command uses to get a run's rows (streams.py)."""
