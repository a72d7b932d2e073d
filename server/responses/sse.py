"""A streamed response's events, as OpenAI's Responses API sends them: each an `event: <type>` line
and a `data: <json>` line, numbered by `sequence_number` from 0, with no `[DONE]` after the last.

In order: `response.created` and `response.in_progress` (the response as it starts: no output yet);
then each output item in turn, done before the next is added: `response.output_item.added`; for a
message `response.content_part.added`, `response.output_text.delta`..., `response.output_text.done`,
`response.content_part.done`; for a function call `response.function_call_arguments.delta`...,
`response.function_call_arguments.done`; then `response.output_item.done`. Last, the whole response:
`response.completed`, or `response.incomplete` when `max_output_tokens` cut the answer short. A
failure after the first event ends the stream with an `error` event, then `response.failed`.

A message's text and a call's arguments come as the model writes them (a call's name as soon as its
opening is recognised: `r3.tool_call_stream`, as chat completions stream them). The response in the
last event is the whole answer as parsed, which is the authority (`r3.tool_call_stream` says when a
stream's early part can differ from it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from r3.chat_format import call_id
from r3.reflect_retry import Generated
from r3.tool_call_stream import ArgumentsPiece, CallStart, ContentPiece, Event, ToolCallStream
from server.openai.sse import failure_message
from server.responses.protocol import (
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    ContentPartEvent,
    ErrorEvent,
    FunctionCallOut,
    OutputItemEvent,
    OutputMessage,
    OutputTextOut,
    Response,
    ResponseError,
    ResponseLifecycleEvent,
    StreamEvent,
    TextDeltaEvent,
    TextDoneEvent,
    call_item_id,
    message_id,
)


class ResponseEvents:
    """The events of one streamed response, numbered as they are made."""

    def __init__(self) -> None:
        self.sequence = 0
        self.announced: Response | None = None  # the response as `response.created` announced it

    def event(self, kind: type[StreamEvent], **fields: Any) -> str:
        event = kind(sequence_number=self.sequence, **fields)
        self.sequence += 1
        return f"event: {event.type}\ndata: {event.model_dump_json()}\n\n"

    def opening(self, response: Response) -> list[str]:
        """`response.created` and `response.in_progress`, of `response` as it starts."""
        self.announced = response
        return [self.event(ResponseLifecycleEvent, type=kind, response=response)
                for kind in ("response.created", "response.in_progress")]

    def closing(self, response: Response) -> str:
        """The last event: `response` whole, completed (or incomplete)."""
        kind = "response.incomplete" if response.status == "incomplete" else "response.completed"
        return self.event(ResponseLifecycleEvent, type=kind, response=response)

    async def framed(self, events: AsyncIterator[str]) -> AsyncIterator[str]:
        """`events`, as `server.openai.sse.streamed` sends them once the 200 is out: a failure among
        them ends the stream with an `error` event and `response.failed` (its `error` saying why)."""
        try:
            async for event in events:
                yield event
        except Exception as error:  # noqa: BLE001 - whatever it was, the client must learn the response failed
            message = failure_message(error)
            yield self.event(ErrorEvent, code="server_error", message=message, param=None)
            if self.announced is not None:
                failed = self.announced.model_copy(update={
                    "status": "failed", "error": ResponseError(code="server_error", message=message)})
                yield self.event(ResponseLifecycleEvent, type="response.failed", response=failed)


class OutputEvents:
    """The events of a response's output items, made as its answer comes: `feed` each piece of text
    generated, then `finish` with the whole answer. A message's item and part are added with its first
    text; a call's item with its name; each item is done when the next is added, the last one at
    `finish` (incomplete when the answer was cut short). Items are named after the answer's
    `completion_id`; calls are read among the tools `offered` (None: tools are not parsed)."""

    def __init__(self, events: ResponseEvents, completion_id: str, offered: frozenset[str] | None) -> None:
        self.events, self.completion_id = events, completion_id
        self.calls = ToolCallStream(offered) if offered is not None else None
        self.items: list[OutputMessage | FunctionCallOut] = []
        self.open: OutputMessage | FunctionCallOut | None = None

    def feed(self, text: str) -> list[str]:
        return self._events(self.calls.feed(text) if self.calls else [ContentPiece(text)])

    def finish(self, answer: Generated) -> list[str]:
        """The rest of `answer`'s calls, and the last item done (an answer with neither text nor a
        call is an empty message)."""
        events = self._events(self.calls.finish(answer.parsed)) if self.calls else []
        if not self.items:
            events += self._add_message()
        return events + self._done("incomplete" if answer.result.finish_reason == "length" else "completed")

    def _events(self, pieces: list[Event]) -> list[str]:
        events: list[str] = []
        for piece in pieces:
            if isinstance(piece, ContentPiece) and piece.text:
                if not isinstance(self.open, OutputMessage):
                    events += self._done() + self._add_message()
                part = self.open.content[0]
                part.text += piece.text
                events.append(self.events.event(TextDeltaEvent, item_id=self.open.id, output_index=self._index,
                                                content_index=0, delta=piece.text))
            elif isinstance(piece, CallStart):
                events += self._done()
                self.open = FunctionCallOut(id=call_item_id(self.completion_id, piece.index),
                                            call_id=call_id(self.completion_id, piece.index), name=piece.name,
                                            arguments="", status="in_progress")
                events += self._add()
            elif isinstance(piece, ArgumentsPiece) and isinstance(self.open, FunctionCallOut) \
                    and self.open.id == call_item_id(self.completion_id, piece.index):
                self.open.arguments += piece.text
                events.append(self.events.event(ArgumentsDeltaEvent, item_id=self.open.id, output_index=self._index,
                                                delta=piece.text))
            # Arguments of a call already done cannot be sent any more: the last event's response has them.
        return events

    @property
    def _index(self) -> int:
        return len(self.items) - 1

    def _add(self) -> list[str]:
        self.items.append(self.open)
        return [self.events.event(OutputItemEvent, type="response.output_item.added", output_index=self._index,
                                  item=self.open)]

    def _add_message(self) -> list[str]:
        messages = sum(isinstance(item, OutputMessage) for item in self.items)
        self.open = OutputMessage(id=message_id(self.completion_id, messages), status="in_progress", content=[])
        added = self._add()
        part = OutputTextOut(text="")
        added.append(self.events.event(ContentPartEvent, type="response.content_part.added", item_id=self.open.id,
                                       output_index=self._index, content_index=0, part=part))
        self.open.content.append(part)
        return added

    def _done(self, status: str = "completed") -> list[str]:
        item, self.open = self.open, None
        if item is None:
            return []
        item.status = status
        index, event = self.items.index(item), self.events.event
        if isinstance(item, OutputMessage):
            part = item.content[0]
            done = [event(TextDoneEvent, item_id=item.id, output_index=index, content_index=0, text=part.text),
                    event(ContentPartEvent, type="response.content_part.done", item_id=item.id, output_index=index,
                          content_index=0, part=part)]
        else:
            done = [event(ArgumentsDoneEvent, item_id=item.id, output_index=index, name=item.name,
                          arguments=item.arguments)]
        return [*done, event(OutputItemEvent, type="response.output_item.done", output_index=index, item=item)]
