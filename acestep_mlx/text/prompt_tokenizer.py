"""Prompt ("tags") tokenizer of ACE-Step v1: the UMT5 tokenizer read from `tokenizer.json`.

Reproduces `AutoTokenizer.from_pretrained(umt5-base)(prompts, padding=True, truncation=True,
max_length=256)` (a T5TokenizerFast) with the `tokenizers` library alone: the file's post-processor
appends `</s>` (id 1); truncation keeps at most `max_length` ids INCLUDING that `</s>` (the library
reserves room for the special tokens the post-processor adds, as the fast tokenizer does); the
batch is right-padded with `<pad>` (id 0) to its longest member.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

TOKENIZER_FILE = "tokenizer.json"
MAX_LENGTH = 256
PAD_TOKEN = "<pad>"
EOS_TOKEN = "</s>"


class PromptTokenizer:
    """Text prompts -> (input_ids, attention_mask), both int64 [B, L]."""

    def __init__(self, tokenizer, max_length: int = MAX_LENGTH, source: str = TOKENIZER_FILE):
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (a token and </s>), got {max_length}")
        self.max_length = int(max_length)
        self.pad_id = self._special_id(tokenizer, PAD_TOKEN, source)
        self.eos_id = self._special_id(tokenizer, EOS_TOKEN, source)
        post = tokenizer.post_processor
        if post is None or post.num_special_tokens_to_add(False) != 1:
            raise ValueError(
                f"{source}: expected a post-processor that appends {EOS_TOKEN} to each prompt "
                "(the UMT5 tokenizer.json of ACE-Step/ACE-Step-v1-3.5B)"
            )
        tokenizer.enable_truncation(
            max_length=self.max_length, stride=0, strategy="longest_first", direction="right"
        )
        tokenizer.enable_padding(
            direction="right", pad_id=self.pad_id, pad_type_id=0, pad_token=PAD_TOKEN
        )
        self._tok = tokenizer

    @staticmethod
    def _special_id(tokenizer, token: str, source: str) -> int:
        idx = tokenizer.token_to_id(token)
        if idx is None:
            raise ValueError(f"{source}: the vocabulary has no {token!r} token; not a T5 tokenizer")
        return int(idx)

    @classmethod
    def from_dir(cls, umt5_dir: str | Path, max_length: int = MAX_LENGTH) -> PromptTokenizer:
        """Load `<umt5_dir>/tokenizer.json` (the checkpoint's `umt5-base/` folder)."""
        from tokenizers import Tokenizer

        path = Path(umt5_dir) / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: pass the checkpoint's umt5-base folder (it holds "
                f"{TOKENIZER_FILE})"
            )
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - the library raises a bare Exception
            raise ValueError(f"{path} is not a readable tokenizers file: {e}") from e
        return cls(tok, max_length=max_length, source=str(path))

    @staticmethod
    def _check(prompts: str | Sequence[str]) -> list[str]:
        if isinstance(prompts, str):
            return [prompts]
        if not isinstance(prompts, Sequence):
            raise TypeError(
                f"prompts must be a string or a list of strings, got {type(prompts).__name__}"
            )
        if len(prompts) == 0:
            raise ValueError("prompts is empty; pass at least one prompt string")
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(
                    f"prompt {i} is a {type(p).__name__}, not a string; pass text prompts "
                    "(e.g. 'pop, upbeat, female vocals')"
                )
        return list(prompts)

    def __call__(self, prompts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Tokenize, truncate to `max_length` (including `</s>`), pad to the longest.

        Returns (input_ids, attention_mask) as int64 numpy arrays of shape [B, L].
        """
        encodings = self._tok.encode_batch(self._check(prompts), add_special_tokens=True)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return ids, mask

    def tokens(self, prompt: str) -> list[str]:
        """The token strings of one prompt (truncated, `</s>` included, no padding)."""
        ids, mask = self([prompt])
        return [self._tok.id_to_token(int(i)) for i, m in zip(ids[0], mask[0], strict=True) if m]
