"""The official client's upload route, as `onecodex upload FILE` runs it, for bench/cpu.py.

    /tmp/occ/bin/python bench/occ_upload.py API_URL API_KEY FILE

Runs in the official client's own virtualenv (`pip install onecodex`), never seqdrop's. It calls the
client's own functions in the order its upload_sequence() does for one file: init_multipart_upload
(requests), then onecodex.lib.upload._s3_intermediate_upload (boto3's upload_fileobj through the
client's FilePassthru, one part at a time, its chunk size, then the callback). What it skips is the
CLI's start-up (click, the API schema fetch), which is not per byte. boto3 finds the S3 endpoint
in AWS_ENDPOINT_URL_S3 and the CA in AWS_CA_BUNDLE, both set by bench/cpu.py.
"""

from __future__ import annotations

import os
import sys

import requests
from onecodex.lib.files import get_file_wrapper
from onecodex.lib.upload import _get_init_multipart_upload_payload, _s3_intermediate_upload
from onecodex.utils import FakeProgressBar


def main(argv: list[str]) -> int:
    api_url, api_key, path = argv
    session = requests.Session()
    session.auth = (api_key, "")
    fobj = get_file_wrapper(path, False, FakeProgressBar())   # as upload_sequence() without a progress bar
    payload = _get_init_multipart_upload_payload(fobj, False, None, None, None)
    resp = session.post(f"{api_url}/api/v1/samples/init_multipart_upload", json=payload, timeout=60)
    resp.raise_for_status()
    fields = resp.json()
    result = _s3_intermediate_upload(fobj, os.path.basename(path), fields, session,
                                     api_url + fields["callback_url"])
    print(f"uploaded as sample {result.get('sample_id')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
