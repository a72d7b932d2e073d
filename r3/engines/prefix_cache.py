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
- A request's turns are held for it while it runs: the engine stores a sequence for its conversation
  (`store(..., conversation=)`, a server request's episode id), and that entry, and the one extending
  it, stay until `end(conversation)`, so the attempt a reflection needs is never evicted by other
  requests' sequences while its verifier judges it. When the request ends its entry is released, as
  vLLM frees a finished request's blocks: kept for a later prompt that shares its prefix, and evicted
  first among the rest when room is needed.
- At most `max_bytes` of keys and values are kept: the least recently stored or reused entry that no
  running request holds leaves first, and an entry that would not fit beside the held ones, or at
  all, is not kept.

Where it differs from vLLM's: entries are whole sequences copied out of the running batch's cache,
not KV blocks shared with it, so the bound is memory of its own beside the running batch's
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
    held_by: set[str]  # the running requests' conversations that hold it (see `PrefixCache.end`)

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

    @property
    def held(self) -> int:
        """How many entries running requests hold (`store(..., conversation=)` until `end`)."""
        return sum(bool(entry.held_by) for entry in self._entries.values())

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

    def store(self, adapter: str, token_ids: Sequence[int], prompt_length: int, layers: Callable[[], LayersKV],
              conversation: str | None = None) -> None:
        """Keep a finished sequence of `adapter`: `token_ids` (its first `prompt_length` its prompt) with
        `layers()` (each layer's keys and values of exactly those tokens; called only if they are kept:
        copying them costs), held for `conversation` until `end(conversation)` (None: held for none).
        The entries of earlier turns of its conversation (`_Entry.continued_by`) are dropped, their holds
        passing to it, then the least recently used entries no request holds until at most `max_bytes`
        are kept; a sequence that would not fit so is not kept. When an entry of `adapter` already begins
        with `token_ids`, that one becomes the most recently used, held for `conversation` too, instead."""
        tokens = torch.tensor(token_ids, dtype=torch.long)
        for key, entry in self._entries.items():
            if entry.adapter == adapter and len(entry.tokens) >= len(tokens) and entry.common_prefix(tokens) == len(tokens):
                self._entries.move_to_end(key)
                if conversation is not None:
                    entry.held_by.add(conversation)
                return
        earlier = [key for key, entry in self._entries.items()
                   if entry.adapter == adapter and entry.continued_by(tokens, prompt_length)]
        held_by = {conversation} if conversation is not None else set()
        held_by.update(*(self._entries[key].held_by for key in earlier))
        # What stays whatever is evicted: the held entries this one does not replace.
        staying = sum(entry.nbytes for key, entry in self._entries.items() if entry.held_by and key not in earlier)
        kv = layers()
        nbytes = sum(k.nbytes + v.nbytes for k, v in kv)
        if staying + nbytes > self.max_bytes:
            return
        for key in earlier:
            self._drop(key)
        self._entries[next(self._ids)] = _Entry(adapter, tokens, prompt_length, kv, nbytes, held_by)
        self.nbytes += nbytes
        unheld = (key for key, entry in list(self._entries.items()) if not entry.held_by)
        while self.nbytes > self.max_bytes:
            self._drop(next(unheld))

    def end(self, conversation: str) -> None:
        """`conversation`'s request has ended: its entries are no longer held for it (each is kept, the
        least recently used entries no request holds leaving first when room is needed)."""
        for entry in self._entries.values():
            entry.held_by.discard(conversation)

    def forget(self, adapter: str) -> None:
        """Drop every entry of `adapter` (it is being unloaded: a later adapter of that name is another)."""
        for key in [key for key, entry in self._entries.items() if entry.adapter == adapter]:
            self._drop(key)

    def _drop(self, key: int) -> None:
        self.nbytes -= self._entries.pop(key).nbytes
