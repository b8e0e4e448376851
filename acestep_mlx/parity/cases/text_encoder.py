"""Parity of the prompt tokenizer and the UMT5 encoder (`reference/text_encoder.*`).

The reference ran `ACEStepPipeline.get_text_embeddings` on the three prompts of the JSON as one
padded batch and one by one, and `get_text_embeddings_null` (ERG, q x 0.01 in blocks 8 and 9) on
the batch. Token ids and masks must match exactly; the token strings of the JSON are compared too.
"""

from __future__ import annotations

import numpy as np

from acestep_mlx.text.prompt_tokenizer import PromptTokenizer


def run(ref, ctx) -> None:
    prompts = ref.json["prompts"]
    tokenizer = PromptTokenizer.from_dir(
        ctx.fixture_dir / "umt5-base", max_length=ref.json["max_length"]
    )
    ids, mask = tokenizer(prompts)
    ref.check("input_ids", ids)
    ref.check("attention_mask", mask)

    names = [f"tokens.{i}" for i in range(len(prompts))]
    ref.expect(names)
    for name, prompt, expected in zip(names, prompts, ref.json["tokens"], strict=True):
        ref.check_value(name, tokenizer.tokens(prompt), expected)

    model = ctx.load("text_encoder", "float32")
    ref.check("last_hidden_state", np.array(model(ids, mask)), note="padded batch")
    ref.check(
        "last_hidden_state_null_erg",
        np.array(model(ids, mask, erg=True)),
        note="ERG: q x 0.01 in blocks 8, 9",
    )
    for i, prompt in enumerate(prompts):
        one_ids, one_mask = tokenizer([prompt])
        ref.check(f"last_hidden_state_single.{i}", np.array(model(one_ids, one_mask)))
