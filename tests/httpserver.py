"""A file server on 127.0.0.1 with HTTP Range support and scheduled faults, started and stopped by the tests.

    with FileServer(folder, faults=["503", "reset", None, "429"]) as url: ...   # one entry per request, in order
    with FileServer(folder, fault_rate=0.3, fault_kinds=("reset", "503"), seed=1) as url: ...

A schedule applies to GET requests, one entry each; random faults hit any request.
Faults: "reset" (connection reset mid-body), "truncate" (body shorter than Content-Length, then close),
"503" (a 5xx), "429" (Too Many Requests with Retry-After), "stall" (no byte for `stall_seconds`),
"404" (permanent).
"""
import random
import socket
import struct
import threading
import time

from lmstream.tools.localserve import LocalServer, RangeHandler


class FaultyRangeHandler(RangeHandler):
    def answer_first(self, head: bool) -> bool:
        srv = self.server
        self.fault = fault = srv.next_fault(head)
        srv.requests.append((self.command, self.path, self.headers.get("Range"), fault))
        if fault == "stall":   # nothing at all for a while: the client's read timeout must fire
            time.sleep(srv.stall_seconds)
        if fault in ("503", "429", "404"):
            self.send_response(int(fault))
            if fault == "429":
                self.send_header("Retry-After", str(srv.retry_after))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return True
        return False

    def send_body(self, body: bytes) -> None:
        if self.fault in ("reset", "truncate"):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            if self.fault == "reset":   # RST instead of FIN
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        super().send_body(body)


class LoggingServer(LocalServer):
    """A LocalServer whose handler logs each request as a tuple ending with its fault (None: none)."""

    @property
    def faults(self):
        return [f for *_, f in self.httpd.requests if f]


class FileServer(LoggingServer):
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
