"""Tool calls while they are generated: an answer's text in, piece by piece; content and calls out
as soon as they can be told, the way vLLM streams them: a call's name first, then its arguments in
the pieces the model writes them.

What is sent early is always a beginning of what `r3.chat_format.parse_tool_calls` makes of the
whole answer, which stays the authority: `finish` sends the rest of it. The early part is:

- content, up to the first place a call could start (`<tool_call>`, `{`, `[` or a code fence),
  without the whitespace that may yet turn out to stand beside a call;
- a call whose opening (`[<tool_call>] {"name": "<offered tool>", "arguments": {`) is recognised:
  its name at once, then its arguments as they come; after it, the next call if one follows.

Anything else waits for the end. A call that the model breaks after its opening was recognised
has been sent already, and the stream then ends with no more than its finish reason, while the
whole answer returns that text as content (a call's arguments are always whole JSON). Under the
engines' grammars only `max_tokens` can cut a call short, and then the finish reason is `length`
(OpenAI's stream, too, ends a call cut short that way).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum, auto

import regex

from r3.chat_format import CALL_CLOSE, CALL_HEADER, CALL_OPEN, ParsedOutput

_CANDIDATE = regex.compile(r"<tool_call>|[{\[]|```")
_STARTS = (CALL_OPEN, "```")  # multi-character candidates, which may arrive cut in two
_HEADER = regex.compile(CALL_HEADER.pattern)
_CLOSE = {True: regex.compile(r"\s*\}\s*" + regex.escape(CALL_CLOSE)), False: regex.compile(r"\s*\}")}


@dataclass(frozen=True)
class ContentPiece:
    text: str


@dataclass(frozen=True)
class CallStart:
    index: int
    name: str


@dataclass(frozen=True)
class ArgumentsPiece:
    index: int
    text: str


Event = ContentPiece | CallStart | ArgumentsPiece


class _JsonNesting:
    """Follows a JSON value character by character, to tell where it closes (for a value read in pieces)."""

    def __init__(self) -> None:
        self._depth = 0
        self._in_string = self._escaped = False

    def close_in(self, text: str, start: int = 0) -> int | None:
        """Reads `text[start:]` as the continuation of the value (which starts with `{` or `[`):
        the index just past its closing character, or None while it is still open."""
        for position in range(start, len(text)):
            char = text[position]
            if self._in_string:
                self._escaped, self._in_string = not self._escaped and char == "\\", self._escaped or char != '"'
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                if self._depth == 0:
                    return position + 1
        return None


class _State(Enum):
    LEAD = auto()  # content, before any call could start
    SEGMENT = auto()  # where a call could start: is it a call's opening?
    ARGUMENTS = auto()  # inside a recognised call's arguments
    CLOSE = auto()  # after a call's arguments: its closing
    NEXT = auto()  # after a call: does another follow?
    HELD = auto()  # nothing more can be told before the end


class ToolCallStream:
    """Feed it an answer's text as it comes (`feed`), then the whole answer's parse (`finish`)."""

    def __init__(self, offered: Collection[str]) -> None:
        self._offered = offered
        self._text = ""
        self._at = 0  # how far `_text` has been read
        self._state = _State.LEAD
        self._tagged = False  # whether the current call opened with <tool_call>
        self._nesting = _JsonNesting()  # of the current call's arguments
        self._content = ""  # content sent
        self._calls: list[tuple[str, str]] = []  # (name, arguments sent) of each call sent

    def feed(self, text: str) -> list[Event]:
        self._text += text
        events: list[Event] = []
        while (step := self._step()) is not None:
            events += step
        return events

    def finish(self, final: ParsedOutput) -> list[Event]:
        """What `final` (the whole answer, parsed) holds beyond what was sent (nothing, if a call sent
        turned out broken: no more can be told consistently)."""
        if any(index >= len(final.tool_calls) or final.tool_calls[index].name != name
               or not final.tool_calls[index].arguments.startswith(sent)
               for index, (name, sent) in enumerate(self._calls)):
            return []
        events: list[Event] = []
        if final.content and final.content.startswith(self._content) and final.content != self._content:
            events.append(ContentPiece(final.content[len(self._content):]))
        for index, call in enumerate(final.tool_calls):
            if index >= len(self._calls):
                events += [CallStart(index, call.name), ArgumentsPiece(index, call.arguments)]
            elif call.arguments.startswith(sent := self._calls[index][1]) and call.arguments != sent:
                events.append(ArgumentsPiece(index, call.arguments[len(sent):]))
        return events

    # ------------------------------------------------------------------ the states

    def _step(self) -> list[Event] | None:
        """Advance as far as the text allows: the events of one step, or None when more text is needed."""
        match self._state:
            case _State.LEAD:
                return self._lead()
            case _State.SEGMENT:
                return self._segment()
            case _State.ARGUMENTS:
                return self._arguments()
            case _State.CLOSE:
                return self._close()
            case _State.NEXT:
                return self._next()
        return None

    def _lead(self) -> list[Event] | None:
        candidate = _CANDIDATE.search(self._text, self._at)
        end = candidate.start() if candidate else len(self._text) - _cut_start(self._text)
        # Stripped: the whitespace at either end may turn out to stand beside a call.
        events = self._send_content(self._text[:end].strip())
        if candidate is None:
            self._at = max(self._at, len(self._text) - len(CALL_OPEN))  # no candidate starts before here
            return events or None
        self._at, self._state = candidate.start(), _State.SEGMENT
        return events

    def _segment(self) -> list[Event] | None:
        header = _HEADER.match(self._text, self._at, partial=True)
        if header is not None and header.partial:
            return None
        name = json.loads(header.group(1)) if header is not None else None
        if name not in self._offered:
            self._state = _State.HELD
            return None
        self._tagged = self._text.startswith(CALL_OPEN, self._at)
        self._at, self._state, self._nesting = header.end(), _State.ARGUMENTS, _JsonNesting()
        self._calls.append((name, ""))
        return [CallStart(len(self._calls) - 1, name)]

    def _arguments(self) -> list[Event] | None:
        start = self._at
        end = self._nesting.close_in(self._text, start)
        if end is not None:
            self._state = _State.CLOSE
        self._at = end or len(self._text)
        if self._at == start:
            return None
        name, sent = self._calls[-1]
        self._calls[-1] = (name, sent + self._text[start:self._at])
        return [ArgumentsPiece(len(self._calls) - 1, self._text[start:self._at])]

    def _close(self) -> list[Event] | None:
        closing = _CLOSE[self._tagged].match(self._text, self._at, partial=True)
        if closing is not None and closing.partial:
            return None
        if closing is None:
            self._state = _State.HELD
            return None
        self._at, self._state = closing.end(), _State.NEXT
        return []

    def _next(self) -> list[Event] | None:
        rest = self._text[self._at:]
        if not rest.strip() or any(start.startswith(rest.lstrip()) for start in _STARTS):
            return None
        self._at += len(rest) - len(rest.lstrip())
        following = _CANDIDATE.match(self._text, self._at)
        self._state = _State.SEGMENT if following is not None and following.group() != "```" else _State.HELD
        return []

    def _send_content(self, content: str) -> list[Event]:
        if len(content) <= len(self._content):
            return []
        piece, self._content = content[len(self._content):], content
        return [ContentPiece(piece)]


def _cut_start(text: str) -> int:
    """The length of the end of `text` that may be the first part of a multi-character candidate."""
    return max((n for start in _STARTS for n in range(1, len(start)) if text.endswith(start[:n])), default=0)
