"""A file server on 127.0.0.1 with HTTP Range support and scheduled faults, started and stopped by the tests.

    with FileServer(folder, faults=["503", "reset", None, "429"]) as url: ...   # one entry per request, in order
    with FileServer(folder, fault_rate=0.3, fault_kinds=("reset", "503"), seed=1) as url: ...

A schedule applies to GET requests, one entry each; random faults hit any request.
Faults: "reset" (connection reset mid-body), "truncate" (body shorter than Content-Length, then close),
"503" (a 5xx), "429" (Too Many Requests with Retry-After), "stall" (no byte for `stall_seconds`),
"404" (permanent).
"""
import http.server
import os
import random
import re
import socket
import struct
import threading
import time


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


class FaultyRangeHandler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def _serve(self, head: bool):
        srv = self.server
        fault = srv.next_fault(head)
        srv.requests.append((self.command, self.path, self.headers.get("Range"), fault))
        if fault == "stall":   # nothing at all for a while: the client's read timeout must fire
            time.sleep(srv.stall_seconds)
        if fault in ("503", "429", "404"):
            self.send_response(int(fault))
            if fault == "429":
                self.send_header("Retry-After", str(srv.retry_after))
            self.send_header("Content-Length", "0")
            self.end_headers()
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
        if fault in ("reset", "truncate"):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            if fault == "reset":   # RST instead of FIN
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        self.wfile.write(body)


class LocalServer:
    """A ThreadingHTTPServer on 127.0.0.1, run in a thread for the `with` block; `requests` logs each request
    as a tuple ending with its fault (None: none)."""

    def __init__(self, handler):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.requests = []
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def faults(self):
        return [f for *_, f in self.httpd.requests if f]

    def __enter__(self):
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class FileServer(LocalServer):
    """`with FileServer(folder, ...) as url:` serves `folder` at `url` until the block ends."""

    def __init__(self, directory: str, faults=None, fault_rate: float = 0.0, fault_kinds=("reset",),
                 seed: int = 0, retry_after: float = 0, stall_seconds: float = 2.0, max_faults: int = 10 ** 9):
        super().__init__(lambda *a, **k: FaultyRangeHandler(*a, directory=directory, **k))
        lock, schedule, rng = threading.Lock(), list(faults or []), random.Random(seed)
        injected = [0]

        def next_fault(head: bool):
            with lock:
                if schedule:   # a schedule is spent on GET requests (the ones with a body to break)
                    return None if head else schedule.pop(0)
                if fault_rate and injected[0] < max_faults and rng.random() < fault_rate:
                    injected[0] += 1
                    return rng.choice(fault_kinds)
                return None
        self.httpd.next_fault = next_fault
        self.httpd.retry_after = retry_after
        self.httpd.stall_seconds = stall_seconds
