#!/usr/bin/env python3
"""A small static HTTP/1.1 file server for the comparison harness (stdlib only).

It serves the peers that need a plain web server (casync's chunk store and index, zsync's
control file and target) and logs every request, so the harness can count requests and
body bytes per run:

    httpd.py --root DIR --listen HOST:PORT --log FILE

Port 0 picks a free port; the chosen one is printed on stdout as `listening PORT`.
Each request appends one JSON line to FILE: {"method", "path", "status", "bytes", "ranges"}
("bytes" is the response body's length). GET and HEAD, keep-alive, and Range requests
with one range (206 with Content-Range) or several (206 multipart/byteranges, which zsync
asks for) are supported. No directory listings: a directory is a 404.
"""

import argparse
import json
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

BOUNDARY = "pdcompare-byteranges-boundary"


def parse_ranges(header, size):
    """The (start, end inclusive) ranges of a `Range: bytes=...` header, or None when it
    is not a byte-range header this server understands (then the whole file is sent)."""
    if not header or not header.startswith("bytes="):
        return None
    out = []
    for part in header[len("bytes="):].split(","):
        part = part.strip()
        if "-" not in part:
            return None
        a, b = part.split("-", 1)
        try:
            if a == "":  # suffix range: the last N bytes
                n = int(b)
                if n <= 0:
                    continue
                start, end = max(0, size - n), size - 1
            else:
                start = int(a)
                end = int(b) if b else size - 1
        except ValueError:
            return None
        end = min(end, size - 1)
        if start > end or start >= size:
            continue
        out.append((start, end))
    return out  # may be empty: unsatisfiable


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every response carries Content-Length
    server_version = "pdcompare-httpd"
    root = "."
    log_lock = threading.Lock()
    log_file = None

    def log_message(self, fmt, *args):  # no per-request noise on stderr
        pass

    def setup(self):
        super().setup()
        # Headers and body go out in separate writes: with Nagle on, a client that waits
        # for the body idles on the delayed ACK (16-53 ms a request measured for casync on
        # loopback). Every tool served from here gets each write at once.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def record(self, status, nbytes, nranges):
        line = json.dumps({"method": self.command, "path": self.path, "status": status,
                           "bytes": nbytes, "ranges": nranges})
        with self.log_lock:
            self.log_file.write(line + "\n")
            self.log_file.flush()

    def fail(self, status):
        body = b"not found\n" if status == 404 else b"bad range\n"
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.record(status, len(body), 0)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        path = os.path.realpath(os.path.join(self.root, rel))
        if not (path == self.root or path.startswith(self.root + os.sep)) or not os.path.isfile(path):
            self.fail(404)
            return
        head = self.command == "HEAD"
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            ranges = parse_ranges(self.headers.get("Range"), size)
            if ranges is not None and not ranges:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                self.record(416, 0, 0)
                return
            if ranges is None:
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                # Logged before the body goes out: once a client has its last byte, the log
                # already counts the request (the harness reads it right after).
                self.record(200, 0 if head else size, 0)
                if not head:
                    while True:
                        buf = f.read(1 << 20)
                        if not buf:
                            break
                        self.wfile.write(buf)
                return
            if len(ranges) == 1:
                start, end = ranges[0]
                self.send_response(206)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                self.record(206, 0 if head else end - start + 1, 1)
                if not head:
                    f.seek(start)
                    self.wfile.write(f.read(end - start + 1))
                return
            # Several ranges: one multipart/byteranges body. The CRLF before each boundary
            # belongs to the delimiter (RFC 2046), and zsync insists on it, first part too.
            parts = []
            for start, end in ranges:
                f.seek(start)
                parts.append(
                    (f"\r\n--{BOUNDARY}\r\nContent-Type: application/octet-stream\r\n"
                     f"Content-Range: bytes {start}-{end}/{size}\r\n\r\n").encode()
                    + f.read(end - start + 1))
            parts.append(f"\r\n--{BOUNDARY}--\r\n".encode())
            body = b"".join(parts)
            self.send_response(206)
            self.send_header("Content-Type", f"multipart/byteranges; boundary={BOUNDARY}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.record(206, 0 if head else len(body), len(ranges))
            if not head:
                self.wfile.write(body)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--log", required=True)
    a = ap.parse_args()
    host, port = a.listen.rsplit(":", 1)
    Handler.root = os.path.realpath(a.root)
    Handler.log_file = open(a.log, "a", encoding="utf-8")
    srv = ThreadingHTTPServer((host, int(port)), Handler)
    srv.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"listening {srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever(poll_interval=0.2)
    except (KeyboardInterrupt, SystemExit):
        pass


if __name__ == "__main__":
    main()
