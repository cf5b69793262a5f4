"""A local server speaking the Hugging Face Hub's HTTP API, for tests (127.0.0.1 only, standard library).

    with HubServer({"HuggingFaceFW/fineweb": folder}) as endpoint:   # set HF_ENDPOINT=endpoint in the client
        ...
    server.api_calls()          # requests to /api/datasets/... so far
    server.cdn_bytes            # bytes of LFS files sent by the CDN host

Endpoints, as huggingface_hub 1.x/2.x and `datasets` use them:
  GET  /api/datasets/{repo}[/revision/{rev}]          repo info: sha, siblings
  GET  /api/datasets/{repo}/tree/{rev}[/{path}]       listing (recursive=, cursor pagination via a Link header)
  POST /api/datasets/{repo}/paths-info/{rev}          info of the given paths (form or JSON body)
  GET|HEAD /datasets/{repo}/resolve/{rev}/{path}      small files served here (Range supported); LFS files
                                                      (Parquet) answered with a 302 to the CDN host
  GET|HEAD /cdn/{sha256}                              the CDN host (another address, 127.0.0.2), with Range

Every snapshot of a repository is kept by its commit sha (`commit()` takes a new one after the folder
changed), so reads pinned to an old commit get the old bytes, as on the Hub. Faults: `api_faults` and
`cdn_faults` are schedules (one entry per request: None, "429", "503", "500", "reset"); `cdn_fault_rate` with
`cdn_fault_kinds` injects random ones; `outage(seconds)` answers every CDN GET with 503 for that long.
A repo in `gated` answers 401 without `Authorization: Bearer <token>`.
"""
import hashlib
import http.server
import json
import os
import random
import re
import socket
import struct
import threading
import time
import urllib.parse

from lmstream.tools.localserve import parse_range

LFS_SUFFIXES = (".parquet", ".arrow", ".gz", ".zst")


class _Snapshot:
    def __init__(self, folder: str):
        self.files = {}
        for root, _, names in os.walk(folder):
            for n in names:
                full = os.path.join(root, n)
                with open(full, "rb") as f:
                    self.files[os.path.relpath(full, folder).replace(os.sep, "/")] = f.read()
        digest = hashlib.sha1()
        for path in sorted(self.files):
            digest.update(path.encode() + b"\0" + hashlib.sha256(self.files[path]).digest())
        self.sha = digest.hexdigest()

    def entry(self, path: str) -> dict:
        if path in self.files:
            data = self.files[path]
            e = {"type": "file", "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(),
                 "size": len(data), "path": path}
            if path.endswith(LFS_SUFFIXES):
                e["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            return e
        return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}

    def dirs(self) -> set:
        out = set()
        for p in self.files:
            parts = p.split("/")[:-1]
            out.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
        return out

    def listing(self, prefix: str, recursive: bool) -> list[dict]:
        prefix = prefix.strip("/")
        below = [p for p in sorted(self.files | dict.fromkeys(self.dirs())) if not prefix or p.startswith(prefix + "/")]
        depth = prefix.count("/") + 1 if prefix else 0
        if not recursive:
            below = [p for p in below if p.count("/") == depth]
        return [self.entry(p) for p in below]


class HubHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._route(head=False)

    def do_HEAD(self):
        self._route(head=True)

    def do_POST(self):
        self._route(head=False)

    # -- replies --------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
        head = head or self.command == "HEAD"
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict | None = None):
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str, message: str):
        self._json({"error": message}, status, {"X-Error-Code": code, "X-Error-Message": message})

    def _fault(self, fault, head: bool) -> bool:
        """Answer with the fault (True) or let the request through (False)."""
        if fault in ("429", "503", "500"):
            headers = {"Retry-After": self.server.hub.retry_after} if fault == "429" else {}
            self._send(int(fault), b"", headers, head)
            return True
        return False

    # -- routing --------------------------------------------------------------------------------
    def _route(self, head: bool):
        srv = self.server.hub
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        query = urllib.parse.parse_qs(url.query)
        kind = "cdn" if path.startswith("/cdn/") else "api" if path.startswith("/api/") else "resolve"
        if kind == "resolve" and srv.over_quota():
            srv.log("resolve-429", self.command, self.path, None, "429", None)
            return self._send(429, b"", {"Retry-After": str(srv.window_left()), **srv.rate_headers()}, head)
        fault = srv.next_fault(kind, self.command)
        srv.log(kind, self.command, self.path, self.headers.get("Range"), fault, self.headers.get("Authorization"))
        if kind == "cdn":
            return self._cdn(path[len("/cdn/"):], head, fault)
        if self._fault(fault, head):
            return
        m = re.match(r"^/api/datasets/(.+?)(?:/(revision|tree|paths-info)/([^/]+)(/.*)?)?$", path)
        if kind == "api" and m:
            repo, op, rev, rest = m.groups()
            if op is None and "/" in repo.split("/", 1)[-1]:
                return self._error(404, "EntryNotFound", "Unknown endpoint")
            snap = self._snapshot(repo, rev or "main")
            if snap is None:
                return
            if op in (None, "revision"):
                return self._info(repo, snap)
            if op == "tree":
                return self._tree(repo, rev, snap, (rest or "").strip("/"), query)
            return self._paths_info(snap)
        m = re.match(r"^/datasets/(.+?)/resolve/([^/]+)/(.+)$", path)
        if kind == "resolve" and m:
            repo, rev, file = m.groups()
            snap = self._snapshot(repo, rev)
            if snap is None:
                return
            return self._resolve(repo, snap, file, head)
        self._error(404, "EntryNotFound", f"Unknown endpoint {path}")

    def _snapshot(self, repo: str, rev: str):
        srv = self.server.hub
        if repo not in srv.repos:
            self._error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}.")
            return None
        if repo in srv.gated and self.headers.get("Authorization") != f"Bearer {srv.token}":
            self._error(401, "GatedRepo", f"Access to dataset {repo} is restricted. You must have access to it "
                                          "and be authenticated to access it. Please log in.")
            return None
        snaps = srv.snapshots[repo]
        sha = snaps["main"] if rev == "main" else rev
        if sha not in snaps:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        return snaps[sha]

    def _info(self, repo: str, snap: _Snapshot):
        self._json({"_id": hashlib.sha1(repo.encode()).hexdigest()[:24], "id": repo, "sha": snap.sha,
                    "private": False, "gated": repo in self.server.hub.gated, "disabled": False, "downloads": 0,
                    "likes": 0, "tags": [], "lastModified": "2026-01-01T00:00:00.000Z",
                    "createdAt": "2026-01-01T00:00:00.000Z", "cardData": {},
                    "siblings": [{"rfilename": p} for p in sorted(snap.files)]})

    def _tree(self, repo: str, rev: str, snap: _Snapshot, prefix: str, query: dict):
        if prefix and prefix not in snap.dirs():
            return self._error(404, "EntryNotFound", f"{prefix} does not exist on {rev}")
        items = snap.listing(prefix, query.get("recursive", ["false"])[0].lower() in ("true", "1"))
        start = int(query.get("cursor", ["0"])[0])
        page = self.server.hub.page_size
        headers = {}
        if start + page < len(items):
            q = {k: v[0] for k, v in query.items()}
            q["cursor"] = str(start + page)
            link = f"{self.server.hub.endpoint}{urllib.parse.urlsplit(self.path).path}?{urllib.parse.urlencode(q)}"
            headers["Link"] = f'<{link}>; rel="next"'
        self._json(items[start:start + page], headers=headers)

    def _paths_info(self, snap: _Snapshot):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        if "json" in (self.headers.get("Content-Type") or ""):
            paths = json.loads(body or "{}").get("paths", [])
        else:
            paths = urllib.parse.parse_qs(body).get("paths", [])
        paths = [paths] if isinstance(paths, str) else paths
        known = snap.dirs()
        self._json([snap.entry(p.strip("/")) for p in paths if p.strip("/") in snap.files or p.strip("/") in known])

    def _resolve(self, repo: str, snap: _Snapshot, file: str, head: bool):
        if file not in snap.files:
            return self._error(404, "EntryNotFound", f"{file} does not exist on {snap.sha}")
        entry, data = snap.entry(file), snap.files[file]
        headers = {"X-Repo-Commit": snap.sha, "ETag": f'"{entry["oid"]}"', "Accept-Ranges": "bytes"}
        if "lfs" in entry:
            srv = self.server.hub
            sha256 = entry["lfs"]["oid"]
            srv.blobs[sha256] = data
            expires = int(time.time() + srv.url_ttl)
            signature = srv.sign(sha256, expires)
            headers.update({"Location": f"{srv.cdn}/cdn/{sha256}?repo={urllib.parse.quote(repo)}&Expires={expires}"
                                        f"&Signature={signature}",
                            "X-Linked-Size": len(data), "X-Linked-Etag": f'"{sha256}"', **srv.rate_headers()})
            return self._send(302, b"", headers, head)
        start, end, partial = parse_range(self.headers.get("Range"), len(data))
        if partial:
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self._send(206 if partial else 200, data[start:end + 1], headers, head)

    def _cdn(self, sha256: str, head: bool, fault):
        srv = self.server.hub
        data = srv.blobs.get(sha256)
        if self._fault(fault, head):
            return
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        expires = int(query.get("Expires", ["0"])[0])
        if query.get("Signature", [""])[0] != srv.sign(sha256, expires) or time.time() > expires:
            srv.log("cdn-refused", self.command, self.path, None, None, None)
            return self._send(403, b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
                              {}, head)
        if data is None:
            return self._send(404, b"", {}, head)
        start, end, partial = parse_range(self.headers.get("Range"), len(data))
        headers = {"ETag": f'"{sha256}"', "Accept-Ranges": "bytes"}
        if partial:
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        body = data[start:end + 1]
        if fault == "reset":
            self.send_response(206 if partial else 200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            with srv.lock:
                srv.cdn_bytes += len(body) // 2
            return
        if not head:
            with srv.lock:
                srv.cdn_bytes += len(body)
        self._send(206 if partial else 200, body, headers, head)


class _Httpd(http.server.ThreadingHTTPServer):
    daemon_threads = True


class HubServer:
    """The Hub API on 127.0.0.1 and a CDN host on 127.0.0.2 (another host name), for a `with` block."""

    def __init__(self, repos: dict, gated=(), token: str = "hf_test", page_size: int = 3, api_faults=None,
                 cdn_faults=None, cdn_fault_rate: float = 0.0, cdn_fault_kinds=("reset",), seed: int = 0,
                 retry_after: float = 0, url_ttl: float = 3600, resolver_quota: int = 0, quota_window: float = 300):
        self.folders = dict(repos)
        # signed storage URLs: valid url_ttl seconds, under a key that rotate_keys() replaces (every URL
        # given out before is refused with a 403, as an expired one is)
        self.url_ttl, self.key = url_ttl, os.urandom(8).hex()
        # the "resolvers" quota: resolver_quota resolve/ requests per quota_window seconds (0: none),
        # told in RateLimit / RateLimit-Policy headers; a request over it is answered 429
        self.resolver_quota, self.quota_window = resolver_quota, quota_window
        self.window_start, self.window_used = time.monotonic(), 0
        self.repos = set(repos)
        self.gated, self.token, self.page_size = set(gated), token, page_size
        self.snapshots: dict = {r: {} for r in repos}
        self.blobs: dict = {}
        self.lock = threading.Lock()
        self.requests: list = []          # (kind, method, path, range, fault, authorization)
        self.cdn_bytes = 0
        self.api_faults, self.cdn_faults = list(api_faults or []), list(cdn_faults or [])
        self.cdn_fault_rate, self.cdn_fault_kinds, self.rng = cdn_fault_rate, cdn_fault_kinds, random.Random(seed)
        self.retry_after = retry_after
        self.outage_until = 0.0
        for r in repos:
            self.commit(r)
        self.api = _Httpd(("127.0.0.1", 0), HubHandler)
        try:
            self.cdn_httpd = _Httpd(("127.0.0.2", 0), HubHandler)
        except OSError:   # a loopback without 127.0.0.2: another port of 127.0.0.1 is another origin too
            self.cdn_httpd = _Httpd(("127.0.0.1", 0), HubHandler)
        for h in (self.api, self.cdn_httpd):
            h.hub = self
        self.endpoint = f"http://127.0.0.1:{self.api.server_address[1]}"
        self.cdn = f"http://{self.cdn_httpd.server_address[0]}:{self.cdn_httpd.server_address[1]}"
        self.threads = [threading.Thread(target=h.serve_forever, daemon=True) for h in (self.api, self.cdn_httpd)]

    def commit(self, repo: str) -> str:
        """Snapshot the repo's folder as a new commit (the new `main`); returns its sha."""
        snap = _Snapshot(self.folders[repo])
        self.snapshots[repo][snap.sha] = snap
        self.snapshots[repo]["main"] = snap.sha
        return snap.sha

    def sign(self, sha256: str, expires: int) -> str:
        return hashlib.sha256(f"{self.key}/{sha256}/{expires}".encode()).hexdigest()[:32]

    def rotate_keys(self) -> None:
        self.key = os.urandom(8).hex()

    def resolves(self) -> int:
        """resolve/ requests so far (those answered 429 included)."""
        return sum(1 for k, *_ in self.requests if k in ("resolve", "resolve-429"))

    def _roll_window(self) -> None:
        if time.monotonic() - self.window_start >= self.quota_window:
            self.window_start, self.window_used = time.monotonic(), 0

    def window_left(self) -> int:
        return max(1, int(self.quota_window - (time.monotonic() - self.window_start) + 0.999))

    def over_quota(self) -> bool:
        """Counts a resolve/ request against the quota: True when it is over."""
        if not self.resolver_quota:
            return False
        with self.lock:
            self._roll_window()
            self.window_used += 1
            return self.window_used > self.resolver_quota

    def rate_headers(self) -> dict:
        if not self.resolver_quota:
            return {}
        left = max(0, self.resolver_quota - self.window_used)
        return {"RateLimit": f'"resolvers";r={left};t={self.window_left()}',
                "RateLimit-Policy": f'"fixed window";"resolvers";q={self.resolver_quota};w={int(self.quota_window)}'}

    def outage(self, seconds: float) -> None:
        self.outage_until = time.monotonic() + seconds

    def next_fault(self, kind: str, method: str):
        with self.lock:
            if kind == "cdn" and method == "GET":
                if time.monotonic() < self.outage_until:
                    return "503"
                if self.cdn_faults:
                    return self.cdn_faults.pop(0)
                if self.cdn_fault_rate and self.rng.random() < self.cdn_fault_rate:
                    return self.rng.choice(self.cdn_fault_kinds)
            if kind == "api" and self.api_faults:
                return self.api_faults.pop(0)
        return None

    def log(self, *entry) -> None:
        with self.lock:
            self.requests.append(entry)

    def api_calls(self) -> list:
        """The /api/datasets/... requests so far (method, path), faulted ones included."""
        return [(m, p) for k, m, p, *_ in self.requests if k == "api" and p.startswith("/api/datasets/")]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self.endpoint

    def __exit__(self, *exc):
        for h in (self.api, self.cdn_httpd):
            h.shutdown()
            h.server_close()
