"""A minimal HTTP/1.1 client over asyncio streams, for the benchmarks that drive a ``kcore serve``
process on loopback (``kcore bench serve``, ``kcore bench soak``).

Stdlib only: kernel-core needs no HTTP client at run time, and one event loop drives every
connection without threads competing with the server for the CPU. One request per connection
(``Connection: close``), which also makes a client abort plain: close the socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

HOST = "127.0.0.1"


async def send(
    port: int, method: str, path: str, body: bytes | None = None, *, accept: str = "application/json"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a connection to ``HOST:port`` and write one request (``body`` as JSON); the caller
    reads the answer with :func:`read_head` and closes the writer."""
    reader, writer = await asyncio.open_connection(HOST, port)
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: {accept}\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    writer.write(head.encode() + b"\r\n" + (body or b""))
    await writer.drain()
    return reader, writer


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The status code and the headers (names lower-cased)."""
    status_line = (await reader.readline()).decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {status_line!r}")
    headers = {}
    while (line := (await reader.readline()).decode("latin-1").strip()):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> AsyncIterator[bytes]:
    """The body's bytes as they arrive: chunked, sized, or up to the connection's end."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readline()).split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()  # the empty trailer
                return
            data = await reader.readexactly(size)
            await reader.readexactly(2)  # CRLF
            yield data
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        while data := await reader.read(65536):
            yield data


async def read_all(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    return b"".join([piece async for piece in read_body(reader, headers)])


async def events(reader: asyncio.StreamReader, headers: dict[str, str]) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event as it arrives (events without data are skipped)."""
    buffer = b""
    async for piece in read_body(reader, headers):
        buffer += piece
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            lines = event.decode().splitlines()
            if data := "".join(line[len("data:"):].strip() for line in lines if line.startswith("data:")):
                yield data


async def get(port: int, path: str, timeout: float = 30.0) -> tuple[int, bytes]:
    """One ``GET``: its status and whole body; ``asyncio.TimeoutError`` after ``timeout`` seconds."""

    async def exchange() -> tuple[int, bytes]:
        reader, writer = await send(port, "GET", path)
        try:
            status, headers = await read_head(reader)
            return status, await read_all(reader, headers)
        finally:
            writer.close()

    return await asyncio.wait_for(exchange(), timeout)
