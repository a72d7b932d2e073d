"""The `<answer>…</answer>` convention: a model marks its final answer inside reasoning text."""

from __future__ import annotations

OPEN_TAG, CLOSE_TAG = "<answer>", "</answer>"


def last_answer(text: str) -> str | None:
    """The stripped content of the last complete `<answer>…</answer>`, or None.

    Found with `rfind` rather than a regex so that text full of unclosed tags stays linear-time.
    """
    close = text.rfind(CLOSE_TAG)
    if close < 0:
        return None
    opening = text.rfind(OPEN_TAG, 0, close)
    if opening < 0:
        return None
    return text[opening + len(OPEN_TAG) : close].strip()
