"""The demo: pre-train a small backbone on generated shapes (`pretrain_backbone`), then compare
DAPT on it with linear probing, full fine-tuning and DAPT on a random backbone (`compare`)."""
