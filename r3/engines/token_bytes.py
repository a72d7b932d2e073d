"""The bytes each token of a vocabulary stands for.

A token's text (`tokenizer.decode([id])`) is U+FFFD when the token is only part of a character
(every token of a Japanese answer may be), so its UTF-8 is not the token. OpenAI's logprobs give
each token's own `bytes`, so that a client can join them back into the text; they come from the
byte-level vocabulary itself, read with xgrammar's `TokenizerInfo.decoded_vocab` (which knows
byte-level BPE, byte-fallback and raw vocabularies alike).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import xgrammar as xgr


@cache
def vocabulary_bytes(tokenizer: Any) -> tuple[bytes, ...]:
    """The bytes of every token id of `tokenizer`'s vocabulary (special tokens: their text's UTF-8).

    Takes about half a second for a 49k vocabulary the first time: call it off the event loop."""
    return tuple(bytes(token) for token in xgr.TokenizerInfo.from_huggingface(tokenizer).decoded_vocab)
