"""Commands that use a model or a run once it exists: `generate` (`seqgen generate`: print,
stream or write outputs), `attention_maps` (`seqgen attention`: heat maps of every head),
`plot` (`seqgen plot`: training curves of runs), `tokenizer` (`seqgen tokenizer train`),
`info` (`seqgen info`: what a checkpoint is, its parameters by component).
`seqgen.cli` builds each from its typed config."""
