"""Data for the tiny random demo checkpoint (layout, configs, a tiny prompt tokenizer)."""
