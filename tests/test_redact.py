"""daemon.redact: every form of a secret is masked; server values are escaped and checked."""

from __future__ import annotations

import base64
import json
import re
import string
import threading
import unicodedata
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon import redact

KEY_ALPHABET = string.ascii_letters + string.digits + "-_.~+/=!@#$%^&*:;,?"
keys = st.text(alphabet=KEY_ALPHABET, min_size=8, max_size=48)
surroundings = st.text(max_size=60)
_B64_RUN = re.compile(r"[A-Za-z0-9+/]+|[A-Za-z0-9_-]+")


@pytest.fixture(autouse=True)
def clean_registry():
    redact.reset()
    yield
    redact.reset()


def encodings_of(key: str) -> list[str]:
    """What a server could echo: the key itself and the ways it is commonly encoded."""
    raw = key.encode()
    basic = base64.b64encode(raw + b":").decode()
    return [key, basic, basic.rstrip("="), base64.urlsafe_b64encode(raw + b":").decode(),
            base64.b64encode(raw).decode(), quote(key, safe=""), quote_plus(key), quote(basic, safe=""),
            json.dumps(key)[1:-1], json.dumps(basic)[1:-1].replace("/", "\\/")]


def base64_hides(text: str, key: str) -> bool:
    """No run of base64 characters in text decodes, at any alignment, to bytes holding key."""
    raw = key.encode()
    for run in _B64_RUN.findall(text):
        for start in range(4):
            chunk = run[start:]
            chunk = chunk[:len(chunk) // 4 * 4]
            for decode in (base64.b64decode, base64.urlsafe_b64decode):
                try:
                    if raw in decode(chunk):
                        return False
                except ValueError:
                    pass
    return True


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=keys, before=surroundings, after=surroundings, which=st.integers(min_value=0, max_value=9))
def test_no_registered_secret_survives_in_any_encoding(key, before, after, which):
    """Whatever text surrounds it, no encoding of a registered key is left after scrub."""
    redact.register(key)
    echoed = encodings_of(key)[which]
    out = redact.scrub(before + echoed + after)
    for form in encodings_of(key):
        assert form not in out
    assert base64_hides(out, key)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=keys, head=st.binary(max_size=40), tail=st.binary(max_size=40), before=surroundings,
       after=surroundings, urlsafe=st.booleans())
def test_key_inside_any_base64_blob_is_masked(key, head, tail, before, after, urlsafe):
    """A server that base64-encodes a document holding the key (at any byte alignment) leaks nothing."""
    redact.register(key)
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    blob = encode(head + key.encode() + tail).decode()
    out = redact.scrub(before + blob + after)
    assert key not in out and blob not in out
    assert base64_hides(out, key)


@settings(max_examples=100, deadline=None)
@given(secrets=st.lists(keys, min_size=1, max_size=4, unique=True), text=surroundings)
def test_several_secrets_are_all_masked(secrets, text):
    """Every registered secret is masked, not only the first or the last one registered."""
    for secret in secrets:
        redact.register(secret)
    out = redact.scrub(text.join(secrets) + text.join(base64.b64encode(s.encode() + b":").decode()
                                                       for s in secrets))
    for secret in secrets:
        assert secret not in out and base64_hides(out, secret)


def test_also_masks_per_call_secrets_without_registering_them():
    """scrub(also=...) masks this upload's policy and signature; later calls do not know them."""
    signature = "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg="
    text = f"the signature {signature} does not match"
    assert signature not in redact.scrub(text, also=[signature])
    assert redact.scrub(text) == text


@pytest.mark.parametrize("text, secret_part", [
    (('<Error><Code>SignatureDoesNotMatch</Code><AWSAccessKeyId>AKIAEXAMPLE</AWSAccessKeyId>'
      '<StringToSign>eyJleHBpcmF0aW9uIjogIjIwMzAifQ==</StringToSign><SignatureProvided>q2s+L/x1Ab=</SignatureProvided>'
      '<StringToSignBytes>65 79 4a 6c</StringToSignBytes></Error>'), ["eyJleHBp", "q2s+L/x1Ab=", "65 79 4a 6c"]),
    ('{"additional_fields": {"policy": "eyJleHBpcmF0aW9uIjogIjIwMzAifQ==", "signature": "q2s+L/x1Ab="}}',
     ["eyJleHBp", "q2s+L/x1Ab="]),
    ("{'policy': 'eyJleHBpcmF0aW9uIjogIjIwMzAifQ==', 'signature': 'q2s+L/x1Ab='}", ["eyJleHBp", "q2s+L/x1Ab="]),
    ("https://s3/b/k?X-Amz-Credential=AKIA%2F20300101%2Fus-east-1&X-Amz-Signature=0f1e2d3c4b5a&x=1",
     ["AKIA%2F2030", "0f1e2d3c4b5a"]),
    ('Content-Disposition: form-data; name="signature"\r\n\r\nq2s+L/x1Ab=\r\n', ["q2s+L/x1Ab="]),
    ("Authorization: AWS4-HMAC-SHA256 Credential=AKIA/2030/us-east-1/s3/aws4_request, Signature=0f1e2d",
     ["AKIA/2030", "0f1e2d"]),
    ("Authorization: Basic dW5rbm93bi1rZXk6", ["dW5rbm93bi1rZXk6"]),
    ("a token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl in prose", ["eyJhbGciOiJIUzI1NiJ9"]),
    ("blob " + base64.b64encode(bytes(range(7, 90))).decode() + " end", ["BwgJCgsMDQ4P"]),
])
def test_secret_shapes_are_masked_without_registration(text, secret_part):
    """S3 policies, signatures, credentials and long random base64 blobs are masked by their shape."""
    out = redact.scrub(text)
    assert redact.MASK in out
    for part in secret_part:
        assert part not in out


@pytest.mark.parametrize("text", [
    "Basic authentication failed: check the API key",
    "/srv/sequencer/output/230101_M00123_0012_000000000-ABCDE/Data/Intensities/BaseCalls/Liver-2_S3_L001_R1_001.fastq.gz",
    "md5 0123456789abcdef0123456789abcdef sample 0123456789abcdef ETag \"d41d8cd98f00b204e9800998ecf8427e\"",
    "user_0123456789abcdef/file_fedcba9876543210/reads.fq",
    "Invalid according to Policy: Policy expired.",
    "S3 answered 403 AccessDenied: the upload's policy expired; init_upload again",
    "/a/very/long/path/without/any/punctuation/whatsoever/AndMixedCase/Plus/Digits2024/x",
])
def test_ordinary_text_is_left_alone(text):
    """Paths, digests, sample ids, S3 keys and error sentences pass through unchanged."""
    redact.register("0f5e3c1a9b7d4e2f8a6c0b1d3e5f7a9c")
    assert redact.scrub(text) == text


def test_register_is_thread_safe():
    """Secrets registered from many threads at once are all recognised afterwards."""
    secrets = [[f"secret-{t}-{i}-xyzzy" for i in range(40)] for t in range(8)]
    barrier = threading.Barrier(len(secrets))

    def register_all(batch):
        barrier.wait()
        for secret in batch:
            redact.register(secret)

    threads = [threading.Thread(target=register_all, args=(batch,)) for batch in secrets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = " ".join(s for batch in secrets for s in batch)
    assert redact.scrub(everything).split() == [redact.MASK] * (8 * 40)


def test_short_strings_are_not_registered():
    """A string shorter than MIN_SECRET_CHARS is ignored rather than masked everywhere."""
    redact.register("abc")
    assert redact.scrub("abc abc") == "abc abc"


def test_scrub_data_walks_json_like_values():
    """scrub_data masks strings at any depth, keys included, and keeps other values."""
    redact.register("hunter2-api-key")
    basic = base64.b64encode(b"hunter2-api-key:").decode()
    data = {"error": "bad key hunter2-api-key", "n": 3, "ok": None,
            "list": [{"hunter2-api-key": "x"}, (basic,)]}
    assert redact.scrub_data(data) == {"error": "bad key [redacted]", "n": 3, "ok": None,
                                       "list": [{"[redacted]": "x"}, ["[redacted]"]]}


# -- values from servers --------------------------------------------------------------------------

_BIDI = set("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029")


@settings(deadline=None)
@given(st.text())
def test_escape_control_leaves_no_control_characters(text):
    """No C0/C1 control, DEL, line separator or bidi override survives escape_control."""
    out = redact.escape_control(text)
    assert not any(unicodedata.category(c) == "Cc" or c in _BIDI for c in out)


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Zl", "Zp"),
                                      blacklist_characters="".join(_BIDI))))
def test_escape_control_keeps_printable_text(text):
    """Text without control characters is returned unchanged (accents, emoji, CJK included)."""
    assert redact.escape_control(text) == text


def test_escape_control_cannot_forge_a_status_line():
    """A sample id carrying a newline and ANSI escapes is shown on one line, escapes visible."""
    hostile = "0123456789abcdef\n\x1b[32mdone   /srv/forged.fastq\x1b[0m\r\u202e"
    out = redact.escape_control(hostile)
    assert out == "0123456789abcdef\\n\\x1b[32mdone   /srv/forged.fastq\\x1b[0m\\r\\u202e"
    assert "\n" not in out and "\x1b" not in out


@given(st.text(alphabet="0123456789abcdef", min_size=16, max_size=16))
def test_sixteen_hex_digits_look_like_a_sample_id(value):
    """Exactly 16 lower-case hex digits is a sample id."""
    assert redact.looks_like_sample_id(value)


@given(st.text(alphabet="0123456789abcdef", min_size=16, max_size=16), st.text(min_size=1, max_size=3),
       st.integers(min_value=0, max_value=16))
def test_anything_else_is_not_a_sample_id(value, extra, at):
    """An inserted character (a newline, an escape, a 17th digit) or a wrong length is refused."""
    assert not redact.looks_like_sample_id(value[:at] + extra + value[at:])


@pytest.mark.parametrize("value", [None, 1234567890123456, "", "0123456789ABCDEF", "0123456789abcde",
                                   "0123456789abcdef\n", "０１２３４５６７８９abcdef"])
def test_non_ids_are_refused(value):
    """Non-strings, upper case, short ids, a trailing newline and non-ASCII digits are not sample ids."""
    assert not redact.looks_like_sample_id(value)


def test_shapes_false_masks_only_registered_secrets():
    """scrub(shapes=False) keeps a random-looking file name but still masks a registered key."""
    redact.register("0f5e3c1a9b7d4e2f8a6c0b1d3e5f7a9c")
    name = "/srv/" + base64.b64encode(bytes(range(40, 120))).decode().replace("/", "x")
    assert redact.scrub(name, shapes=False) == name and redact.scrub(name) != name
    assert redact.scrub(name + "0f5e3c1a9b7d4e2f8a6c0b1d3e5f7a9c", shapes=False) == name + redact.MASK
