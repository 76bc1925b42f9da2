"""The turn writer: what is written in one turn of the event loop leaves in one write at its end."""

from __future__ import annotations

import asyncio
from typing import Any

from lossd.transport import JOIN_MAX_BYTES, TurnWriter


class FakeTransport:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, data: list[bytes]) -> None:
        self.calls.append(("writelines", list(data)))

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_writes_of_one_turn_leave_together_at_its_end() -> None:
    async def scenario() -> None:
        t = FakeTransport()
        w = TurnWriter(t, asyncio.get_running_loop())  # type: ignore[arg-type]
        w.write(b"HTTP/1.1 200 OK\r\n\r\n")
        w.write(memoryview(b"body"))
        assert t.calls == []  # held until the end of the turn
        await asyncio.sleep(0)
        assert t.calls == [("write", b"HTTP/1.1 200 OK\r\n\r\nbody")]
        w.write(b"next")  # a later turn: a write of its own
        await asyncio.sleep(0)
        assert t.calls[1:] == [("write", b"next")]
        assert w.get_extra_info("peername") == "info:peername"  # the rest passes through

    asyncio.run(scenario())


def test_large_writes_are_not_copied_and_close_sends_what_is_held() -> None:
    async def scenario() -> None:
        t = FakeTransport()
        w = TurnWriter(t, asyncio.get_running_loop())  # type: ignore[arg-type]
        big = bytes(JOIN_MAX_BYTES)
        w.write(b"head")
        w.write(big)
        await asyncio.sleep(0)
        assert t.calls == [("writelines", [b"head", big])]
        w.write(b"last words")
        w.close()
        assert t.calls[1:] == [("write", b"last words"), ("close", None)]
        w.write(b"too late")  # written after the close: dropped, as the transport would
        await asyncio.sleep(0)
        assert t.calls[-1] == ("close", None)

    asyncio.run(scenario())
