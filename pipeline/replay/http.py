"""HTTP/1.1 pieces the replay exchange's faces share: a reply, its head, and gateway pages."""

from __future__ import annotations

import email.utils
import json
from http import HTTPStatus
from typing import Any

GATEWAY = {
    502: b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway"
    b"</h1></center></body></html>",
    503: b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>",
    504: b"<html><head><title>504 Gateway Time-out</title></head><body><center><h1>504 Gateway"
    b" Time-out</h1></center></body></html>",
    403: b"",
    429: b"Too Many Requests",
}


class Reply:
    __slots__ = ("body", "ctype", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        ctype: str = "application/json; charset=utf-8",
    ) -> None:
        self.status, self.body, self.headers, self.ctype = status, body, headers or {}, ctype

    def head(self, length: int | None = None) -> bytes:
        n = len(self.body) if length is None else length
        lines = [
            f"HTTP/1.1 {self.status} {HTTPStatus(self.status).phrase}",
            f"Content-Type: {self.ctype}",
            f"Content-Length: {n}",
            "Connection: keep-alive",
            *(f"{k}: {v}" for k, v in self.headers.items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()


def json_reply(status: int, obj: Any) -> Reply:
    return Reply(status, json.dumps(obj, separators=(",", ":"), default=str).encode())


def http_date(now_ms: int) -> str:
    """An HTTP `Date` header value (whole seconds, rounded down) of the exchange clock."""
    return email.utils.formatdate(now_ms // 1000, usegmt=True)


def parse_head(head: bytes) -> tuple[str | None, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1"):
        return None, "", {}
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return parts[0], parts[1], headers
