"""Generation for every task, one engine: `engine` (generate and stream: sampling, greedy,
beam search), `batch` (continuous batching: rows with their own options join and leave),
`beam` (many prompts' beam searches as rows of one KV cache), `rows` (the rows of one KV
cache: join, leave, reorder, slide past the context), `cache` (keys and values, per row and
shared by rows), `decoding` (options, logits processors, stop rules, waiting prompts),
`text` (the text of ids as they arrive, cut at stop strings).
`seqgen.inference` puts a checkpoint's tokenizer and task around it."""
