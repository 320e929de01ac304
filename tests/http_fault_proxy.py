"""An HTTP reverse proxy for tests: forwards every request to a server (moto's S3) and
can answer the requests whose path matches a pattern with an error of its own, as an
expired token (403 AccessDenied) or throttling (503 SlowDown) looks to a client."""
from __future__ import annotations

import http.client
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-authorization", "proxy-authenticate"}
_S3_CODES = {403: "AccessDenied", 500: "InternalError", 503: "SlowDown"}


class HttpFaultProxy:
    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.denied = 0  # requests answered with the fault so far
        self._rule: tuple[re.Pattern, int] | None = None
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self, path_pattern: str, status: int = 403) -> None:
        """Answer every request whose path matches `path_pattern` (re.search) with `status`."""
        with self._lock:
            self._rule = (re.compile(path_pattern), status)

    def heal(self) -> None:
        with self._lock:
            self._rule = None

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _fault_for(self, path: str) -> int | None:
        with self._lock:
            if self._rule is None or not self._rule[0].search(path):
                return None
            self.denied += 1
            return self._rule[1]

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(chunks)

            def _relay(self) -> None:
                body = self._body()
                status = proxy._fault_for(self.path)
                if status is not None:
                    self._answer(status, {"Content-Type": "application/xml"}, _s3_error(status))
                    return
                conn = http.client.HTTPConnection(*proxy.target, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                self._answer(resp.status, {k: v for k, v in resp.getheaders()
                                           if k.lower() not in _HOP_BY_HOP | {"content-length"}}, data,
                             length=resp.getheader("Content-Length"))

            def _answer(self, status: int, headers: dict, data: bytes, length: str | None = None) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                # A HEAD answer carries the object's length with no body.
                self.send_header("Content-Length", length if self.command == "HEAD" and length else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        return Handler


def _s3_error(status: int) -> bytes:
    code = _S3_CODES.get(status, "InternalError")
    return (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{code} '
            f'(injected by the test proxy)</Message><RequestId>fault</RequestId></Error>').encode()
