"""A minimal, fast upload sink for benchmarks: NOT the sandbox, and checks almost nothing.

    python bench/sink.py [--md5s FILE.json]

One loopback port serves a tiny One Codex-like API (init_upload, confirm_upload, cancel_upload,
GET samples) whose init_upload hands out this same server's `/s3` as upload_url, and `POST /s3`,
which reads the body into one reused buffer with large readinto() calls (recv_into underneath) and
throws it away. It answers 201 with an ETag: the MD5 given for the file part's filename in
--md5s (a JSON {filename: md5} precomputed by the benchmark), else a dummy. It checks only that
exactly Content-Length bytes arrived. Its purpose is to measure a client, not a server: the
sandbox (strict, parses every byte in Python, computes MD5) may be slower than the clients.

Prints "sink: http://127.0.0.1:PORT" when ready; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import secrets
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BUFFER = 8 << 20
DUMMY_ETAG = "00000000000000000000000000000000"
FILENAME_RE = re.compile(rb'name="file"; filename="([^"]*)"')


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    md5s: dict[str, str] = {}
    received: list[dict] = []

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def _answer(self, status: int, body: bytes, ctype: str = "application/json", headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json_body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def do_GET(self) -> None:
        if self.path.startswith("/api/v1/samples"):
            self._answer(200, b"[]")
        elif self.path == "/_sink/received":
            self._answer(200, json.dumps(self.received).encode())
        else:
            self._answer(404, b'{"message": "not found", "status": 404}')

    def do_POST(self) -> None:
        path = self.path.split("?")[0]
        if path == "/s3":
            self._s3()
        elif path == "/api/v1/samples/init_upload":
            data = self._json_body()
            host, port = self.server.server_address[:2]
            expiration = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() + 3600))
            policy = base64.b64encode(json.dumps({"expiration": expiration, "conditions": []}).encode()).decode()
            sample_id = secrets.token_hex(8)
            fields = {"AWSAccessKeyId": "SINKAKIA000000000000", "acl": "private",
                      "key": f"user_0000000000000000/file_{sample_id}/${{filename}}", "policy": policy,
                      "signature": "c2luaw==", "success_action_status": "201",
                      "x-amz-server-side-encryption": "AES256"}
            self._answer(200, json.dumps({"additional_fields": fields, "sample_id": sample_id,
                                          "upload_url": f"http://{host}:{port}/s3",
                                          "filename": data.get("filename")}).encode())
        elif path == "/api/v1/samples/confirm_upload":
            sid = self._json_body().get("sample_id")
            self._answer(200, json.dumps({"message": "Upload confirmed.", "sample": {"$ref": f"/api/v1/samples/{sid}"},
                                          "success": True}).encode())
        elif path == "/api/v1/samples/cancel_upload":
            self._json_body()
            self._answer(200, b'{"success": true}')
        else:
            self._answer(404, b'{"message": "not found", "status": 404}')

    def _s3(self) -> None:
        length = int(self.headers.get("Content-Length") or -1)
        if length < 0:
            self.close_connection = True
            self._answer(411, b"<Error><Code>MissingContentLength</Code></Error>", "application/xml")
            return
        buf = bytearray(BUFFER)
        view = memoryview(buf)
        remaining, head, filename = length, bytearray(), None
        started = time.monotonic()
        while remaining > 0:
            n = self.rfile.readinto(view[:min(BUFFER, remaining)])
            if not n:
                self.close_connection = True     # the client went away
                return
            if filename is None and len(head) < 65536:
                head += view[:min(n, 65536)]
                m = FILENAME_RE.search(head)
                if m:
                    filename = m.group(1).decode(errors="replace")
            remaining -= n
        seconds = time.monotonic() - started
        etag = self.md5s.get(filename or "", DUMMY_ETAG)
        self.received.append({"filename": filename, "bytes": length, "seconds": round(seconds, 3)})
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<PostResponse><Location>sink</Location><Bucket>sink'
                f'</Bucket><Key>{filename}</Key><ETag>"{etag}"</ETag></PostResponse>').encode()
        self._answer(201, body, "application/xml", {"ETag": f'"{etag}"'})


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--md5s", help="JSON file {filename: md5} for the ETags")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    if args.md5s:
        with open(args.md5s) as f:
            Handler.md5s = json.load(f)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    print(f"sink: http://127.0.0.1:{server.server_address[1]}", flush=True)
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
