"""bench/sink.py with the official client's route and TLS: the server of bench/cpu.py.

    python bench/cpu_sink.py [--md5s FILE.json] [--tls-cert CERT.pem --tls-key KEY.pem]

Everything bench/sink.py serves (init_upload, the S3 POST it discards, confirm_upload...), and:
  * init_multipart_upload and the multipart callback of One Codex's API, as the sandbox answers them
    (daemon/sandbox/api.py), for the official client `onecodex upload`;
  * the S3 multipart calls boto3 makes for it: CreateMultipartUpload (POST ?uploads), UploadPart (PUT
    ?partNumber&uploadId, read to its end, Content-Length or chunked, and thrown away),
    CompleteMultipartUpload (POST ?uploadId) and AbortMultipartUpload (DELETE ?uploadId);
  * HTTPS on the same port when given a certificate (the benchmark makes a self-signed one; clients
    trust it through their CA-bundle settings, verification stays on).
Like bench/sink.py it checks almost nothing: its purpose is to cost the clients, not to judge them.
Prints "sink: URL" when ready; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import ssl
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sink import BUFFER, DUMMY_ETAG, Handler  # noqa: E402


class CpuSinkHandler(Handler):
    scheme = "http"

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        if url.path == "/api/v1/samples/init_upload":
            self._init_upload()
        elif url.path == "/api/v1/samples/init_multipart_upload":
            self._init_multipart()
        elif url.path.endswith("/multipart_callback"):
            sample_id = url.path.split("/")[-2]
            self._json_body()
            self._answer(200, json.dumps({"message": "Upload successful", "sample_id": sample_id}).encode())
        elif "uploads" in query:
            upload_id = secrets.token_hex(16)
            self._discard_body()
            self._xml(200, f"<InitiateMultipartUploadResult><Bucket>sink</Bucket><Key>{url.path}</Key>"
                           f"<UploadId>{upload_id}</UploadId></InitiateMultipartUploadResult>")
        elif "uploadId" in query:
            self._discard_body()
            self._xml(200, f"<CompleteMultipartUploadResult><Location>sink</Location><Bucket>sink</Bucket>"
                           f"<Key>{url.path}</Key><ETag>\"{DUMMY_ETAG}-1\"</ETag></CompleteMultipartUploadResult>")
        else:
            super().do_POST()

    def do_PUT(self) -> None:
        self._discard_body()
        self._answer(200, b"", "application/xml", {"ETag": f'"{DUMMY_ETAG}"'})

    def do_DELETE(self) -> None:
        self._discard_body()
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _xml(self, status: int, text: str) -> None:
        self._answer(status, ('<?xml version="1.0" encoding="UTF-8"?>\n' + text).encode(), "application/xml")

    def _base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{self.scheme}://{host}:{port}"

    def _init_upload(self) -> None:
        data = self._json_body()
        sample_id = secrets.token_hex(8)
        fields = {"AWSAccessKeyId": "SINKAKIA000000000000", "acl": "private",
                  "key": f"user_0000000000000000/file_{sample_id}/${{filename}}", "policy": "e30=",
                  "signature": "c2luaw==", "success_action_status": "201",
                  "x-amz-server-side-encryption": "AES256"}
        self._answer(200, json.dumps({"additional_fields": fields, "sample_id": sample_id,
                                      "upload_url": f"{self._base()}/s3",
                                      "filename": data.get("filename")}).encode())

    def _init_multipart(self) -> None:
        data = self._json_body()
        sample_id = secrets.token_hex(8)
        key = f"user_0000000000000000/multipart_{sample_id}/{data.get('filename')}"
        self._answer(200, json.dumps({
            "sample_id": sample_id, "s3_bucket": "sink", "file_id": key,
            "upload_aws_access_key_id": "ASIASINK" + secrets.token_hex(6).upper(),
            "upload_aws_secret_access_key": secrets.token_urlsafe(30),
            "callback_url": f"/api/v1/samples/{sample_id}/multipart_callback"}).encode())

    def _discard_body(self) -> None:
        """Read the request body to its end (Content-Length, or chunked as botocore may send it)."""
        buf = bytearray(BUFFER)
        view = memoryview(buf)
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass        # trailers (botocore sends its checksum here)
                    return
                self._read_exactly(view, size + 2)
        else:
            self._read_exactly(view, int(self.headers.get("Content-Length") or 0))

    def _read_exactly(self, view: memoryview, remaining: int) -> None:
        while remaining > 0:
            n = self.rfile.readinto(view[:min(len(view), remaining)])
            if not n:
                self.close_connection = True
                return
            remaining -= n


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--md5s", help="JSON file {filename: md5} for the S3 POST's ETags")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    args = p.parse_args(argv)
    if args.md5s:
        with open(args.md5s) as f:
            CpuSinkHandler.md5s = json.load(f)
    server = ThreadingHTTPServer(("127.0.0.1", 0), CpuSinkHandler)
    server.daemon_threads = True
    if args.tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        CpuSinkHandler.scheme = "https"
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    print(f"sink: {CpuSinkHandler.scheme}://127.0.0.1:{server.server_address[1]}", flush=True)
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
