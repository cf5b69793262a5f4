"""A fault-injecting reverse proxy on 127.0.0.1 in front of an S3-compatible server (moto), for tests.

    with FaultyProxy("http://127.0.0.1:PORT", faults=["reset", "slowdown", None]) as endpoint: ...

A schedule applies to GET requests that read an object (Range reads), one entry each, in order; other
requests pass through. Faults: "reset" (half the body, then a TCP reset), "slowdown" (503 with S3's
SlowDown error document), "internal" (500 InternalError).
"""
import http.client
import http.server
import socket
import struct
import threading
import urllib.parse

from httpserver import LoggingServer

_ERROR = ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{msg}</Message>'
          '<RequestId>lmstream-test</RequestId></Error>')


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._forward()

    def do_HEAD(self):
        self._forward()

    def do_PUT(self):
        self._forward()

    def do_POST(self):
        self._forward()

    def _forward(self):
        srv = self.server
        fault = srv.next_fault(self.command, self.headers.get("Range"))
        srv.requests.append((self.command, self.path, fault))
        if fault in ("slowdown", "internal"):
            code, status, msg = (("SlowDown", 503, "Please reduce your request rate.") if fault == "slowdown"
                                 else ("InternalError", 500, "We encountered an internal error."))
            body = _ERROR.format(code=code, msg=msg).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else None
        conn = http.client.HTTPConnection(srv.upstream.hostname, srv.upstream.port, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
        conn.request(self.command, self.path, body=data, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        conn.close()
        if self.command == "HEAD":
            return
        if fault == "reset":
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        self.wfile.write(payload)


class FaultyProxy(LoggingServer):
    def __init__(self, upstream: str, faults=None):
        super().__init__(_Handler)
        self.httpd.upstream = urllib.parse.urlparse(upstream)
        lock, schedule = threading.Lock(), list(faults or [])

        def next_fault(method, range_header):
            with lock:
                return schedule.pop(0) if schedule and method == "GET" and range_header else None
        self.httpd.next_fault = next_fault
