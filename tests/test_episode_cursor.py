"""server.routes.episodes' page cursor, which the admin API and the dashboard both write and read."""

from datetime import UTC, datetime

import pytest

from r3.episodes import Episode
from server.errors import APIError
from server.routes.episodes import decode_cursor, encode_cursor


def _episode(episode_id: str, created_at: float) -> Episode:
    return Episode(id=episode_id, tenant=None, model="m", adapter=None, task_kind="general", verifier=None,
                   store_text=False, messages=None, tools=None, tool_choice=None, created_at=created_at)


def test_a_cursor_reads_back_as_the_stores_after() -> None:
    created_at = 1_700_000_000.123456
    cursor = encode_cursor(_episode("ep_0123|with a bar", created_at))
    assert isinstance(cursor, str) and cursor.isascii()
    assert decode_cursor(cursor) == (datetime.fromtimestamp(created_at, UTC), "ep_0123|with a bar")


@pytest.mark.parametrize("text", ["garbage", "", "bm90IGEgY3Vyc29y", "%%%"])
def test_text_that_is_no_cursor_is_a_400_on_after(text: str) -> None:
    with pytest.raises(APIError) as refused:
        decode_cursor(text)
    assert (refused.value.status, refused.value.param) == (400, "after")
