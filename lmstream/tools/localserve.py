"""A local file server on 127.0.0.1 with HTTP Range requests, for the notebooks and the tests: a
folder served as a remote dataset is, so that "download" and "stream" can be timed side by side
without leaving the machine.

    server = serve_folder(folder)
    with server as url:                       # http://127.0.0.1:PORT, until the block ends
        # server.bytes_sent: body bytes written to clients so far
        ...
"""
from __future__ import annotations

import email.utils
import functools
import http.server
import os
import re
import threading
import time

CHUNK = 1 << 16   # bytes written (and counted) at a time


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
    """GET and HEAD of files with Range support. Subclasses may answer a request first
    (`answer_first`, True when it answered) or send a body otherwise (`send_body`)."""
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
        """Send in chunks, counting what was written; a client that hangs up early (it had what it
        needed) ends it."""
        try:
            for at in range(0, len(body), CHUNK):
                chunk = body[at: at + CHUNK]
                self.wait_for_link(len(chunk))
                self.wfile.write(chunk)
                with self.server.lock:
                    self.server.bytes_sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def wait_for_link(self, nbytes: int) -> None:
        """With a bandwidth limit, wait for this chunk's turn on the one simulated link all
        connections share."""
        rate = self.server.bytes_per_s
        if not rate:
            return
        with self.server.lock:
            start = max(time.monotonic(), self.server.link_free_at)
            self.server.link_free_at = start + nbytes / rate
        time.sleep(max(0.0, start + nbytes / rate - time.monotonic()))

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
        self.send_header("Last-Modified", email.utils.formatdate(os.path.getmtime(path), usegmt=True))
        self.end_headers()
        if head:
            return
        with open(path, "rb") as f:
            f.seek(start)
            body = f.read(end - start + 1)
        self.send_body(body)


class LocalServer:
    """A ThreadingHTTPServer on 127.0.0.1 run in a thread for the `with` block (`handler`: a request
    handler class or factory); `requests` logs the requests a handler records."""

    def __init__(self, handler, mb_per_s: float = 0):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.bytes_per_s = mb_per_s * 1e6   # 0: as fast as loopback goes
        self.httpd.link_free_at = 0.0
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


def serve_folder(directory: str, mb_per_s: float = 0) -> LocalServer:
    """A LocalServer of the files under `directory` (Range requests answered); `mb_per_s` > 0 sends
    the bytes of all connections through one link of that bandwidth, as a network would."""
    return LocalServer(functools.partial(RangeHandler, directory=directory), mb_per_s)
