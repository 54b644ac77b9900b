"""A local Application Insights ingestion endpoint that keeps every envelope it receives."""

from __future__ import annotations

import gzip
import http.server
import json
import threading
import time
from typing import Any


class IngestionServer:
    """`IngestionEndpoint=http://127.0.0.1:PORT/` sends telemetry here (POST /v2.1/track or /v2/track)."""

    def __init__(self) -> None:
        self.envelopes: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        received = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                items = json.loads(body) if self.path.rstrip("/").endswith("track") else []
                items = items if isinstance(items, list) else [items]
                received.raw.append(body)
                received.envelopes.extend(items)
                answer = json.dumps({"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def connection_string(self) -> str:
        port = self.server.server_address[1]
        return f"InstrumentationKey=00000000-0000-0000-0000-000000000001;IngestionEndpoint=http://127.0.0.1:{port}/"

    def of_type(self, base_type: str) -> list[dict[str, Any]]:
        return [e["data"]["baseData"] for e in self.envelopes if e.get("data", {}).get("baseType") == base_type]

    def wait_for(self, base_type: str, predicate=lambda data: True, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for data in self.of_type(base_type):
                if predicate(data):
                    return data
            time.sleep(0.1)
        seen = sorted({e.get("data", {}).get("baseType", "?") for e in self.envelopes})
        raise AssertionError(f"no matching {base_type} within {timeout}s; received types: {seen}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
