"""The bytes each token of a vocabulary stands for, and the name OpenAI gives a token by them.

A token's text (`tokenizer.decode([id])`) is U+FFFD when the token is only part of a character
(every token of a Japanese answer may be), so its UTF-8 is not the token. OpenAI's logprobs give
each token's own `bytes`, so that a client can join them back into the text; they come from the
byte-level vocabulary itself, read with xgrammar's `TokenizerInfo.decoded_vocab` (which knows
byte-level BPE, byte-fallback and raw vocabularies alike). OpenAI names such a token by its bytes
(`token_name`), so that different pieces have different names.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import xgrammar as xgr


@cache
def vocabulary_bytes(tokenizer: Any) -> tuple[bytes, ...]:
    """The bytes of every token id of `tokenizer`'s vocabulary (special tokens: their text's UTF-8).

    Takes about half a second for a 49k vocabulary the first time: call it off the event loop."""
    return tuple(bytes(token) for token in xgr.TokenizerInfo.from_huggingface(tokenizer).decoded_vocab)


def own_bytes(vocabulary: Sequence[bytes], token_id: int, text: str) -> bytes:
    """Token `token_id`'s bytes in `vocabulary` (`vocabulary_bytes`); `text`'s UTF-8 for an id past it
    (a model's embedding may have more rows than its tokenizer has tokens)."""
    return vocabulary[token_id] if token_id < len(vocabulary) else text.encode()


def token_name(raw: bytes) -> str:
    """The token of bytes `raw` as OpenAI's logprobs name it: its text, or, when `raw` is not UTF-8 on
    its own (part of a character), `bytes:` and the bytes as a Python literal writes them, e.g.
    `b"\\xe3\\x81"` -> `"bytes:\\xe3\\x81"` (the backslashes literal)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + repr(raw)[2:-1]
