"""A minimal HTTP/1.1 GET over Trio, for scraping health and metrics endpoints in tests."""

from __future__ import annotations

import urllib.parse

import trio


async def http_get(url: str) -> tuple[int, dict[str, str], bytes]:
    """GET *url* (``http://host:port/path``); returns status, headers (lower-case), body."""
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    request = (
        f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"
    )
    with trio.fail_after(10):  # a safety net, not a timing assertion
        async with await trio.open_tcp_stream(parts.hostname, parts.port) as stream:
            await stream.send_all(request.encode())
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body
