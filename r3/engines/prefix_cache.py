"""Automatic prefix caching for the embedded engine: the KV cache of finished sequences, kept so that a
later prompt on the same adapter that begins with the same tokens prefills only what is new.

A rescue reads its own past: the reflection's prompt begins with the failed attempt's prompt and
answer, and the retry's with the reflection's prompt and the reflection (`r3.reflection`), token for
token as the chat template renders them (an answer's text encoded again gives its tokens back; where
it does not, as for trailing whitespace the template trims, the match stops there). vLLM's automatic
prefix caching reuses them; this is its design, kept simple:

- An entry is one finished sequence's tokens (its prompt and the tokens it generated that the model
  has read) with their keys and values in every layer, under the adapter that computed them (the
  engine's registered name; its entries leave with it when it is unloaded, so a name loaded again
  never meets another version's). vLLM keys its blocks by LoRA id the same way.
- A prompt takes the keys and values of the longest common prefix it has with any entry of its
  adapter, at most all its tokens but the last (fed again to give the first token's logits, as vLLM
  does), and prefills the rest. Only keys and values are shared: sampling, penalties and a grammar's
  state are each sequence's own.
- A sequence whose prompt begins with the whole prompt of an entry, and goes on, is a later turn of
  that entry's conversation: storing it drops that entry (a reflection replaces its attempt, a retry
  its reflection), so a request leaves one entry, extended at each step. A sequence whose tokens begin
  an entry's is not stored: that entry holds them all already.
- At most `max_bytes` of keys and values are kept; the least recently stored or reused entry leaves
  first, and one larger than the bound is not kept.

Where it differs from vLLM's: entries are whole sequences copied out of the running batch's cache,
not 16-token blocks shared with it, so the bound is memory of its own beside the running batch's
(vLLM's cached blocks are its KV cache's free blocks). Not thread-safe: the engine calls it under its
model lock.

Sources: vLLM's automatic prefix caching (docs/design/prefix_caching.md; `vllm/v1/core/kv_cache_manager.py`:
`get_computed_blocks` hits at most all the prompt's tokens but one) and its counters
`prefix_cache_queries` / `prefix_cache_hits` (tokens).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

# Each layer's (keys, values), each [1, kv heads, tokens, head dim].
LayersKV = list[tuple[torch.Tensor, torch.Tensor]]


def common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading tokens two token sequences ([tokens] each, on one device) share."""
    n = min(len(a), len(b))
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0]) if len(differ) else n


@dataclass
class _Entry:
    adapter: str
    tokens: torch.Tensor  # [tokens], int64, on the CPU: the prompt, then what was generated
    prompt_length: int
    layers: LayersKV
    nbytes: int

    def common_prefix(self, prompt: torch.Tensor) -> int:
        """How many leading tokens `prompt` ([tokens], int64, CPU) shares with this entry."""
        return common_prefix(self.tokens, prompt)

    def continued_by(self, tokens: torch.Tensor, prompt_length: int) -> bool:
        """Whether a sequence of `tokens` whose first `prompt_length` are its prompt is a later turn of this
        entry's conversation: its prompt begins with this entry's whole prompt, and is longer."""
        return self.prompt_length < prompt_length and torch.equal(self.tokens[:self.prompt_length],
                                                                  tokens[:self.prompt_length])


class PrefixCache:
    def __init__(self, max_bytes: int) -> None:
        """Keeps at most `max_bytes` (≥ 1, else ValueError) of keys and values."""
        if max_bytes < 1:
            raise ValueError(f"a prefix cache holds at least one byte, not {max_bytes}")
        self.max_bytes = max_bytes
        self.nbytes = 0  # keys and values held now
        self.queries = 0  # prompt tokens looked up, as vLLM's prefix_cache_queries
        self.hits = 0  # of those, tokens whose keys and values were reused, as vLLM's prefix_cache_hits
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # least recently used first
        self._ids = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def match(self, adapter: str, prompt_ids: Sequence[int]) -> tuple[int, LayersKV]:
        """The longest prefix of `prompt_ids` that an entry of `adapter` holds, at most all its tokens
        but the last, as (its length, each layer's keys and values of it: views into the entry, which
        is never written to); (0, []) when none. The entry becomes the most recently used."""
        self.queries += len(prompt_ids)
        prompt = torch.tensor(prompt_ids[:-1], dtype=torch.long)
        best, length = None, 0
        for key, entry in self._entries.items():
            if entry.adapter == adapter and (common := entry.common_prefix(prompt)) > length:
                best, length = key, common
        if best is None:
            return 0, []
        self._entries.move_to_end(best)
        self.hits += length
        return length, [(k[:, :, :length], v[:, :, :length]) for k, v in self._entries[best].layers]

    def store(self, adapter: str, token_ids: Sequence[int], prompt_length: int, layers: Callable[[], LayersKV]) -> None:
        """Keep a finished sequence of `adapter`: `token_ids` (its first `prompt_length` its prompt) with
        `layers()` (each layer's keys and values of exactly those tokens; called only if they are kept:
        copying them costs). The entries of earlier turns of its conversation (`_Entry.continued_by`) are
        dropped, then the least recently used ones until at most `max_bytes` are held. When an entry of
        `adapter` already begins with `token_ids`, that one becomes the most recently used instead."""
        tokens = torch.tensor(token_ids, dtype=torch.long)
        for key, entry in self._entries.items():
            if entry.adapter == adapter and len(entry.tokens) >= len(tokens) and entry.common_prefix(tokens) == len(tokens):
                self._entries.move_to_end(key)
                return
        kv = layers()
        nbytes = sum(k.nbytes + v.nbytes for k, v in kv)
        if nbytes > self.max_bytes:
            return
        for key in [key for key, entry in self._entries.items()
                    if entry.adapter == adapter and entry.continued_by(tokens, prompt_length)]:
            self._drop(key)
        self._entries[next(self._ids)] = _Entry(adapter, tokens, prompt_length, kv, nbytes)
        self.nbytes += nbytes
        while self.nbytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def forget(self, adapter: str) -> None:
        """Drop every entry of `adapter` (it is being unloaded: a later adapter of that name is another)."""
        for key in [key for key, entry in self._entries.items() if entry.adapter == adapter]:
            self._drop(key)

    def _drop(self, key: int) -> None:
        self.nbytes -= self._entries.pop(key).nbytes
