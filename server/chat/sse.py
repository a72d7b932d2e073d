"""A streamed chat answer's SSE chunks, as vLLM streams them: a choice's role first; its content and,
when tools are offered, its tool calls (a call's id and name as soon as its opening is recognised,
then its arguments in pieces: `r3.tool_call_stream`); its finish, with R3's account. Every chunk
carries `finish_reason` and `logprobs`, null until they have a value; with `n` > 1 the choices'
chunks interleave, each with its `index`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from r3.chat_format import call_id
from r3.engines.base import TokenLogprob
from r3.reflect_retry import Generated
from r3.tool_call_stream import ArgumentsPiece, CallStart, ContentPiece, Event, ToolCallStream
from server.chat.protocol import ChatCompletionChunk, ChunkChoice, Delta, FunctionCallDelta, R3Info, ToolCallDelta
from server.chat.responses import finish_reason, logprobs_out
from server.protocol import Usage


@dataclass(frozen=True)
class Wire:
    """What every chunk of one streamed response shares."""

    model: str
    completion_id: str
    created: int
    logprobs: bool
    include_usage: bool
    vocabulary: Sequence[bytes] = ()  # the bytes of each token id, for logprobs

    def event(self, choices: list[ChunkChoice], usage: Usage | None = None, r3: R3Info | None = None) -> str:
        chunk = ChatCompletionChunk(id=self.completion_id, created=self.created, model=self.model, choices=choices,
                                    usage=usage, r3=r3)
        return chunk.sse(self.include_usage)


class ChoiceChunks:
    """The SSE chunks of choice `index` of a streamed response, made as its answer comes: `start`,
    then `piece` for each piece of text generated, then `end`. Its tool calls (of `offered_tools`;
    None: tools are not parsed) are named after `completion_id`; each chunk carries the logprobs of
    the tokens since the last one; R3's account goes in the choice with `info_in_choice` (n > 1),
    else in the chunk."""

    def __init__(self, wire: Wire, index: int, completion_id: str, offered_tools: frozenset[str] | None,
                 info_in_choice: bool = False) -> None:
        self.wire, self.index, self.completion_id, self.info_in_choice = wire, index, completion_id, info_in_choice
        self.calls = ToolCallStream(offered_tools) if offered_tools is not None else None
        self.unsent: list[TokenLogprob] = []

    def start(self, prefix: str = "") -> list[str]:
        """The role, and what the forced `prefix` of the answer (already written) holds."""
        return [self._chunk(Delta(role="assistant", content="")), *self._deltas(self.calls.feed(prefix) if self.calls else [])]

    def piece(self, text: str, tokens: list[TokenLogprob]) -> list[str]:
        """`text` generated, as `tokens`."""
        self.unsent += tokens
        events = self.calls.feed(text) if self.calls else [ContentPiece(text)] if text or tokens else []
        return self._deltas(events)

    def end(self, turn: Generated, info: R3Info) -> list[str]:
        """The rest of the tool calls of `turn` (the answer), and its finish with R3's account `info`."""
        rest = self._deltas(self.calls.finish(turn.parsed)) if self.calls else []
        return [*rest, self._chunk(Delta(), finish=finish_reason(turn), info=info)]

    def _deltas(self, events: list[Event]) -> list[str]:
        return [self._chunk(_delta(event, self.completion_id)) for event in events]

    def _chunk(self, delta: Delta, finish: str | None = None, info: R3Info | None = None) -> str:
        lp = logprobs_out(self.unsent, self.wire.vocabulary) if self.wire.logprobs and self.unsent else None
        self.unsent = []
        choice = ChunkChoice(index=self.index, delta=delta, finish_reason=finish, logprobs=lp,
                             r3=info if self.info_in_choice else None)
        return self.wire.event([choice], r3=None if self.info_in_choice else info)


def _delta(event: Event, completion_id: str) -> Delta:
    if isinstance(event, ContentPiece):
        return Delta(content=event.text)
    if isinstance(event, CallStart):
        return Delta(tool_calls=[ToolCallDelta(index=event.index, id=call_id(completion_id, event.index),
                                               type="function",
                                               function=FunctionCallDelta(name=event.name, arguments=""))])
    assert isinstance(event, ArgumentsPiece)
    return Delta(tool_calls=[ToolCallDelta(index=event.index, function=FunctionCallDelta(arguments=event.text))])
