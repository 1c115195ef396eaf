"""Host keys are pinned whole and answered as fingerprints (SPEC 2.10): the
core's pure functions, against a key and the fingerprint ssh-keygen printed
for it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from migration_core.machines import fingerprint, key_blob, pin_after_contact, whole_key

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBgHKifq2pcHw5E8DQMVMWRGy5A1QwtHPW0e2sJkoTNM"
FINGERPRINT = "SHA256:i9ypcWzOd5kfFjUJNwUz777zrun1szzJwqetgKrkBB8"  # ssh-keygen -lf, for KEY
OTHER = "SHA256:" + "A" * 43


def test_a_whole_key_is_answered_as_its_fingerprint_and_a_fingerprint_as_it_is() -> None:
    assert fingerprint(KEY) == FINGERPRINT
    assert fingerprint(KEY + " a comment") == FINGERPRINT
    assert fingerprint(FINGERPRINT) == FINGERPRINT
    assert whole_key(KEY + " a comment") == KEY and whole_key(FINGERPRINT) is None


@given(st.text())
def test_anything_that_is_no_key_is_answered_as_it_is(text: str) -> None:
    if key_blob(text) is None:
        assert fingerprint(text) == text


def test_a_key_whose_blob_names_another_type_is_no_key() -> None:
    assert key_blob("ssh-rsa " + KEY.split()[1]) is None
    assert key_blob("ssh-ed25519 not-base64!") is None


def test_a_contact_pins_the_first_key_and_completes_a_fingerprint_that_names_it() -> None:
    assert pin_after_contact(None, KEY) == KEY
    assert pin_after_contact(FINGERPRINT, KEY) == KEY
    assert pin_after_contact(OTHER, KEY) == OTHER  # never replaced by another key
    assert pin_after_contact(KEY, KEY) == KEY
