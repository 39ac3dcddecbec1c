"""The acceptance emulator is as strict as it claims: a test that passes against it means something."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator

import pytest
import requests
from emulator import FIELD_ORDER, Emulator

KEY = "emulator-self-test-key"
DATA = b"@r1\nACGT\n+\nIIII\n"


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(api_key=KEY) as e:
        yield e


def _init(emu: Emulator) -> dict:
    resp = requests.post(emu.base_url + "/api/v1/samples/init_upload", auth=(KEY, ""), timeout=5,
                         json={"filename": "r.fastq", "size": len(DATA), "upload_type": "standard"})
    assert resp.status_code == 200
    return resp.json()


def _body(fields: list[tuple[str, str]], *, file_last: bool = True) -> tuple[bytes, str]:
    b = "xyzBOUNDARYxyz"
    parts = [f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields]
    file_part = (f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="r.fastq"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n").encode() + DATA + b"\r\n"
    parts = parts + [file_part] if file_last else [file_part] + parts
    return b"".join(parts) + f"--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


def test_a_correct_upload_is_confirmed_with_the_md5_etag(emu: Emulator) -> None:
    """Fields in the given order, file last: 201 with the MD5 ETag in the XML, then confirm 200."""
    init = _init(emu)
    assert list(init["additional_fields"]) == FIELD_ORDER
    body, ctype = _body([(k, str(v)) for k, v in init["additional_fields"].items()])
    resp = requests.post(init["upload_url"], data=body, headers={"Content-Type": ctype}, timeout=5)
    assert resp.status_code == 201 and "ETag" not in resp.headers
    assert f'"{hashlib.md5(DATA).hexdigest()}"' in resp.text
    confirm = requests.post(emu.base_url + "/api/v1/samples/confirm_upload", auth=(KEY, ""), timeout=5,
                            json={"sample_id": init["sample_id"], "upload_type": "standard"})
    assert confirm.status_code == 200 and emu.confirmed_bytes() == [DATA] and emu.violations == []


def test_protocol_mistakes_are_refused_and_recorded(emu: Emulator) -> None:
    """Wrong key, seed field order, file not last, an Authorization header at S3, no samples listing."""
    assert requests.post(emu.base_url + "/api/v1/samples/init_upload", auth=("nope", ""), timeout=5,
                         json={"filename": "r.fastq", "size": 1}).status_code == 401
    assert requests.get(emu.base_url + "/api/v1/samples", auth=(KEY, ""), timeout=5).status_code == 404
    init = _init(emu)
    fields = [(k, str(v)) for k, v in init["additional_fields"].items()]
    body, ctype = _body(fields, file_last=False)
    resp = requests.post(init["upload_url"], data=body, headers={"Content-Type": ctype}, timeout=5)
    assert resp.status_code == 400 and "<Code>MalformedPOSTRequest</Code>" in resp.text
    body, ctype = _body(fields)
    auth = "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
    resp = requests.post(init["upload_url"], data=body, headers={"Content-Type": ctype, "Authorization": auth},
                         timeout=5)
    assert resp.status_code == 400
    body, ctype = _body(sorted(fields))
    assert requests.post(init["upload_url"], data=body, headers={"Content-Type": ctype}, timeout=5).status_code == 201
    text = " ".join(emu.violations)
    assert "not the last part" in text and "Authorization" in text and "order" in text
    assert not emu.confirmed()
