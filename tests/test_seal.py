"""The S3 POST form an upload in flight keeps in the queue is sealed with the API key
(daemon/upload/seal.py): nothing of the form in clear, opened only with a key this process was given,
a damaged or foreign token read as a lost form, and a queue row of an older version (form in clear)
still read."""

from __future__ import annotations

import base64
import json

import pytest

from daemon.upload.records import InitResult
from daemon.upload.seal import FormSeal

POLICY = base64.b64encode(json.dumps({"expiration": "2026-12-03T12:00:00.000Z", "conditions": []}).encode()).decode()
R2_POLICY = base64.b64encode(b'{"expiration": "2026-12-03T12:00:00.000Z", "conditions": [["eq", "$x", "2"]]}').decode()
SIGNATURE, R2_SIGNATURE = "dGhlIHNpZ25hdHVyZSBvZiBSMQ==", "dGhlIHNpZ25hdHVyZSBvZiBSMg=="
KEY = "0123456789abcdef0123456789abcdef"


def paired_init() -> InitResult:
    answer = {"upload_url": "https://bucket.s3.amazonaws.com/",
              "additional_fields": {"key": "u/file_1/${filename}", "policy": POLICY, "signature": SIGNATURE},
              "paired_end_upload_url": "https://bucket.s3.amazonaws.com/",
              "paired_end_additional_fields": {"key": "u/file_1_paired_end/${filename}", "policy": R2_POLICY,
                                               "signature": R2_SIGNATURE}}
    return InitResult.from_answer("0123456789abcdef", answer, paired=True)


def test_a_stored_init_holds_no_part_of_its_forms_in_clear_and_opens_whole() -> None:
    init = paired_init()
    stored = init.to_json(FormSeal(KEY))
    for secret in (POLICY, R2_POLICY, SIGNATURE, R2_SIGNATURE, "u/file_1", "s3.amazonaws", KEY):
        assert secret not in stored, secret
    doc = json.loads(stored)
    assert (doc["sample_id"], doc["expires_at"], doc["paired"]) == ("0123456789abcdef", init.expires_at, True)
    assert init.expires_at is not None            # the expiry stays readable: the policy_fits check needs it
    assert InitResult.from_json(stored, FormSeal(KEY)) == init    # another process, the same key


def test_two_seals_of_one_form_differ() -> None:
    """A fresh IV each time: the same form stored twice gives two tokens (nothing to compare across rows)."""
    seal = FormSeal(KEY)
    assert seal.seal("form") != seal.seal("form")


def test_a_form_sealed_under_another_key_is_a_lost_form() -> None:
    stored = paired_init().to_json(FormSeal(KEY))
    assert InitResult.from_json(stored, FormSeal("another-key-of-another-account")) is None


def test_a_key_re_read_in_the_same_process_still_opens_the_forms_sealed_before_it() -> None:
    seal = FormSeal(KEY)
    before = paired_init().to_json(seal)
    seal.use_key("the-new-key")
    after = paired_init().to_json(seal)
    assert InitResult.from_json(before, seal) == InitResult.from_json(after, seal) == paired_init()
    assert InitResult.from_json(after, FormSeal(KEY)) is None      # new forms are sealed with the new key
    assert InitResult.from_json(after, FormSeal("the-new-key")) == paired_init()


@pytest.mark.parametrize("damage", [
    lambda doc: {**doc, "sealed": doc["sealed"][:-8] + "AAAAAAAA"},     # a changed byte: the HMAC fails
    lambda doc: {**doc, "sealed": doc["sealed"][: len(doc["sealed"]) // 2]},
    lambda doc: {**doc, "sealed": "not a token \u00e9"},
    lambda doc: {**doc, "sealed": 12},
    lambda doc: {k: v for k, v in doc.items() if k != "sample_id"},
])
def test_a_damaged_stored_init_is_a_lost_form_not_an_error(damage) -> None:
    seal = FormSeal(KEY)
    doc = json.loads(paired_init().to_json(seal))
    assert InitResult.from_json(json.dumps(damage(doc)), seal) is None


@pytest.mark.parametrize("text", ["", "{", "[]", "null", '{"sealed": "x"}'])
def test_a_stored_init_that_is_not_one_is_a_lost_form(text: str) -> None:
    assert InitResult.from_json(text, FormSeal(KEY)) is None


def test_a_row_stored_in_clear_by_an_older_version_is_still_read() -> None:
    """An upgrade while an upload is in flight: the row's form, stored in clear before the seal, is used
    (the next init of that row is sealed)."""
    init = paired_init()
    legacy = json.dumps({"sample_id": init.sample_id, "upload_url": init.upload_url,
                         "fields": [list(f) for f in init.fields], "expires_at": init.expires_at,
                         "paired_end_upload_url": init.paired_end_upload_url,
                         "paired_end_fields": [list(f) for f in init.paired_end_fields]})
    assert InitResult.from_json(legacy, FormSeal(KEY)) == init


def test_no_key_no_seal() -> None:
    with pytest.raises(ValueError, match="no API key"):
        FormSeal().seal("form")
    assert FormSeal().open("anything") is None
