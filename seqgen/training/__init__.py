"""Training, one workflow for every task: `workflow` (pretrain and finetune: where a run
starts, its data, its model, its report), `module` (the LightningModule: masked loss, AdamW,
warmup + cosine), `trainer` (the Lightning Trainer: checkpoints, loggers, budget,
precision), `datamodules` (batches of windows or examples, for one process or several),
`examples` (per-example sequences with loss masks, batched by length), `mfu` (model FLOPs
utilisation)."""
