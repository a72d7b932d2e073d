"""Constrained decoding for the embedded engine, with xgrammar: the library vLLM's own structured
outputs use, so both engines hold an answer to the same grammar in the same way.

One `Grammars` per engine compiles a request's constraint (a JSON schema, or a structural tag as
vLLM takes it: `xgrammar.StructuralTag`'s JSON; both as the structural tag `r3.structured_output.grammar_tag`
makes, whitespace bounded) against the tokenizer's vocabulary once, with a cache keyed by the tag
(at most `GRAMMAR_CACHE_BYTES`, least recently used first out);
each sequence gets its own `RowGrammar` (an `xgrammar.GrammarMatcher`), so every row of a batch is
held to its own grammar and rows without one are untouched. As in vLLM, the grammar's mask is
applied before logprobs are taken, and the end-of-sequence token is allowed only where the grammar
may end (and then it is the only choice left), so an answer stops when its grammar is complete.

Sources: xgrammar's `GrammarCompiler.compile_json_schema` / `compile_structural_tag`,
`GrammarMatcher.fill_next_token_bitmask` / `accept_token`, `apply_token_bitmask_inplace`; vLLM's
`vllm/v1/structured_output/backend_xgrammar.py` (the same calls, the same whitespace rules).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
import xgrammar as xgr

from r3.engines.base import EngineError, SamplingParams
from r3.structured_output import grammar_tag, xgrammar_reason

GRAMMAR_CACHE_BYTES = 256 * 1024 * 1024


class RowGrammar:
    """One sequence's grammar state: which tokens may come next, advanced by each token sampled."""

    def __init__(self, compiled: xgr.CompiledGrammar, vocab_size: int) -> None:
        self._matcher = xgr.GrammarMatcher(compiled)
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def mask(self, logits: torch.Tensor) -> None:
        """Set the logits ([vocab], in place) of every token the grammar does not allow next to -inf."""
        self._matcher.fill_next_token_bitmask(self._bitmask)
        xgr.apply_token_bitmask_inplace(logits, self._bitmask[0].to(logits.device))

    def accept(self, token_id: int) -> None:
        """Advance past `token_id`. Raises `EngineError` if the grammar refuses it (a masked row never samples one)."""
        if not self._matcher.accept_token(token_id):
            raise EngineError(f"token {token_id} breaks the request's grammar")


class Grammars:
    """Compiles the constraints of `SamplingParams` for one tokenizer (thread-safe; compiled grammars are cached)."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_limit_bytes=GRAMMAR_CACHE_BYTES)
        self._vocab_size = vocab_size

    def compile(self, params: SamplingParams) -> xgr.CompiledGrammar | None:
        """`params`' grammar (None: unconstrained): `grammar_tag` of its structural tag and JSON schema.
        Takes up to seconds for a client's schema (a server runs it through `grammar_work`). Raises
        `EngineError` for a constraint xgrammar cannot compile."""
        tag = grammar_tag(params.structural_tag, params.json_schema)
        if tag is None:
            return None
        try:
            return self._compiler.compile_structural_tag(json.dumps(tag))
        except (RuntimeError, ValueError, TypeError) as error:
            raise EngineError(f"cannot constrain decoding to this schema: {xgrammar_reason(error)}") from error

    def row(self, compiled: xgr.CompiledGrammar) -> RowGrammar:
        return RowGrammar(compiled, self._vocab_size)



class GrammarsForGenerate:
    """A logits processor for transformers' `generate()` (the trainer's sampler) that holds each row
    of the batch to its own grammar, as the engines do (None: the row is free). A row is released
    once it ends: at an end-of-sequence token, after which `generate()` only pads it."""

    def __init__(self, grammars: Sequence[RowGrammar | None], eos_token_ids: Sequence[int]) -> None:
        self._grammars = list(grammars)
        self._eos = frozenset(eos_token_ids)
        self._ended = [grammar is None for grammar in self._grammars]
        self._first = True

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """`scores` ([rows, vocab]) masked in place, after advancing each grammar past the token each
        row was given last (`input_ids`' last column)."""
        for row, grammar in enumerate(self._grammars):
            if self._ended[row]:
                continue
            if not self._first:
                token = int(input_ids[row, -1])
                if token in self._eos:
                    self._ended[row] = True
                    continue
                grammar.accept(token)
            grammar.mask(scores[row])
        self._first = False
        return scores
