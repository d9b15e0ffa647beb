"""A minimal Server-Sent Events reader for tests (aiohttp response → events)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass
class SSE:
    id: str | None
    event: str
    data: Any


class EventReader:
    """Reads events from an open stream; comments are counted, not returned."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments: list[str] = []

    async def next(self, timeout: float = 10.0) -> SSE:
        return await asyncio.wait_for(self._next(), timeout)

    async def _next(self) -> SSE:
        event, data, event_id = "message", [], None
        while True:
            raw = await self.response.content.readline()
            if raw == b"":
                raise EOFError("stream ended")
            line = raw.decode().rstrip("\r\n")
            if line == "":
                if data:
                    return SSE(event_id, event, json.loads("\n".join(data)))
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                event_id = value

    async def take(self, count: int, timeout: float = 10.0) -> list[SSE]:
        return [await self.next(timeout) for _ in range(count)]

    async def comment(self, text: str, timeout: float = 10.0) -> None:
        """Read until a comment line containing *text* arrives (events are an error)."""
        async def scan() -> None:
            while not any(text in c for c in self.comments):
                raw = await self.response.content.readline()
                if raw == b"":
                    raise EOFError("stream ended")
                line = raw.decode().rstrip("\r\n")
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                elif line.startswith(("data:", "event:")):
                    raise AssertionError(f"unexpected event line {line!r}")

        await asyncio.wait_for(scan(), timeout)
