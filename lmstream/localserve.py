"""A local file server on 127.0.0.1 with HTTP Range requests, for the notebooks and the tests: a folder served as
a remote dataset is, so that "download" and "stream" can be timed side by side without leaving the machine.

    server = serve_folder(folder)
    with server as url:                       # http://127.0.0.1:PORT, until the block ends
        ...                                   # server.bytes_sent: the body bytes sent so far
"""
from __future__ import annotations

import functools
import http.server
import os
import re
import threading


def parse_range(header: str | None, size: int):
    """(start, end inclusive, partial) for a Range header (bytes=a-b, a-, -n)."""
    m = re.match(r"bytes=(\d*)-(\d*)", header or "")
    if not m:
        return 0, size - 1, False
    if m.group(1):
        start = int(m.group(1))
        end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    else:
        start = max(0, size - int(m.group(2)))
        end = size - 1
    return start, end, True


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """GET and HEAD of files with Range support. Subclasses may answer a request first (`answer_first`, True when
    it answered) or send a body otherwise (`send_body`)."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.serve(head=True)

    def do_GET(self):
        self.serve(head=False)

    def answer_first(self, head: bool) -> bool:
        return False

    def send_body(self, body: bytes) -> None:
        self.wfile.write(body)

    def serve(self, head: bool):
        if self.answer_first(head):
            return
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return
        size = os.path.getsize(path)
        start, end, partial = parse_range(self.headers.get("Range"), size)
        if partial:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if head:
            return
        with open(path, "rb") as f:
            f.seek(start)
            body = f.read(end - start + 1)
        with self.server.lock:
            self.server.bytes_sent += len(body)
        self.send_body(body)


class LocalServer:
    """A ThreadingHTTPServer on 127.0.0.1 run in a thread for the `with` block (`handler`: a request handler class
    or factory); `requests` logs the requests a handler records."""

    def __init__(self, handler):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.requests = []
        self.httpd.bytes_sent = 0
        self.httpd.lock = threading.Lock()
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def bytes_sent(self) -> int:
        return self.httpd.bytes_sent

    def __enter__(self):
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def serve_folder(directory: str) -> LocalServer:
    """A LocalServer of the files under `directory` (Range requests answered)."""
    return LocalServer(functools.partial(RangeHandler, directory=directory))
