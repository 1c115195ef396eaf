"""SPEC 3.1 as the core holds it: who may register, password checks, and the
login throttle (10 failures within 60 s), against a clock the test moves."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

import migration_core as core
from adapters.memory import MemoryStorage
from adapters.passwords import ScryptHasher

from .support import FakeClock, field_errors

HASHER = ScryptHasher(n=2**4)  # cheap: these tests check rules, not hash strength
LIMIT, WINDOW = 10, 60.0

username_chars = st.characters(categories=["L", "Nd"]) | st.sampled_from("@.+-_")
usernames = st.text(username_chars, min_size=1, max_size=150)
passwords = st.text(min_size=8, max_size=20)


def _is_valid_username(text: str) -> bool:
    return 1 <= len(text) <= 150 and all(c.isalnum() or c in "@.+-_" for c in text)


bad_usernames = st.one_of(
    st.just(""),
    st.text(username_chars, min_size=151, max_size=160),
    st.tuples(usernames, st.sampled_from(" /\\!#$%&*()[]{}'\"\n\t,;:=?"), usernames).map(
        lambda parts: (parts[0] + parts[1] + parts[2])[:150]
    ),
).filter(lambda text: not _is_valid_username(text))


@given(usernames, passwords)
def test_a_valid_username_and_password_register_and_then_authenticate(
    username: str, password: str
) -> None:
    storage = MemoryStorage()
    user = core.register_user(storage, HASHER, username, password)
    assert user.username == username
    assert password not in user.password_hash
    throttle = core.LoginThrottle(FakeClock())
    assert core.authenticate(storage, HASHER, throttle, username, password) == user
    with pytest.raises(core.AuthenticationFailed):
        core.authenticate(storage, HASHER, throttle, username, password + "x")


@given(bad_usernames, passwords)
def test_a_username_outside_the_rules_is_refused(username: str, password: str) -> None:
    with pytest.raises(core.InvalidInput) as refused:
        core.register_user(MemoryStorage(), HASHER, username, password)
    assert field_errors(refused.value) == {"username"}


@given(usernames, st.text(max_size=7))
def test_a_password_shorter_than_8_characters_is_refused(username: str, password: str) -> None:
    storage = MemoryStorage()
    with pytest.raises(core.InvalidInput) as refused:
        core.register_user(storage, HASHER, username, password)
    assert field_errors(refused.value) == {"password"}
    with storage.unit_of_work(write=False) as uow:
        assert uow.users.by_username(username) is None


@given(usernames, passwords, passwords)
def test_a_taken_username_is_refused_as_invalid_input(
    username: str, first: str, second: str
) -> None:
    storage = MemoryStorage()
    original = core.register_user(storage, HASHER, username, first)
    with pytest.raises(core.InvalidInput) as refused:
        core.register_user(storage, HASHER, username, second)
    assert field_errors(refused.value) == {"username"}
    throttle = core.LoginThrottle(FakeClock())
    assert core.authenticate(storage, HASHER, throttle, username, first) == original


# Time moves in steps of 1/64 s: exact in both microseconds and binary floats,
# so "within 60 s" has one meaning for the test and the throttle.
TICK = 1 / 64
events = st.lists(
    st.one_of(
        st.tuples(st.just("fail"), st.sampled_from(["ann", "bob"])),
        st.tuples(st.just("check"), st.sampled_from(["ann", "bob"])),
        st.tuples(st.just("wait"), st.integers(0, 40 * 64)),
    ),
    max_size=60,
)


@given(events)
def test_ten_failures_within_60_seconds_throttle_that_username_until_the_window_passes(
    steps: list[tuple[str, object]],
) -> None:
    clock = FakeClock()
    throttle = core.LoginThrottle(clock)
    started = clock.now()
    failures: dict[str, list[float]] = {"ann": [], "bob": []}
    for action, argument in steps:
        now = (clock.now() - started).total_seconds()
        if action == "wait":
            assert isinstance(argument, int)
            clock.advance(argument * TICK)
            continue
        assert isinstance(argument, str)
        recent = [t for t in failures[argument] if t > now - WINDOW]
        if action == "fail":
            throttle.failed(argument)
            failures[argument].append(now)
        elif len(recent) >= LIMIT:
            with pytest.raises(core.Throttled) as refused:
                throttle.check(argument)
            # Retrying after `retry_after` seconds (and no sooner than a second
            # before) finds fewer than LIMIT failures left in the window.
            released = sorted(recent)[len(recent) - LIMIT] + WINDOW
            assert refused.value.retry_after == max(1, math.ceil(released - now))
        else:
            throttle.check(argument)


# Whole seconds and microseconds apart, so failures spread over the window.
window_offsets = st.tuples(st.integers(0, 59), st.integers(0, 999_999)).map(
    lambda parts: parts[0] * 1_000_000 + parts[1]
)


@given(st.lists(window_offsets, min_size=LIMIT, max_size=LIMIT + 5))
def test_waiting_retry_after_seconds_always_lets_the_username_in_again(
    offsets: list[int],
) -> None:
    """Failures at any microsecond within one window, maybe more than the limit
    (concurrent logins can overshoot it): `retry_after` is always long enough."""
    clock = FakeClock()
    throttle = core.LoginThrottle(clock)
    start = clock.now()
    for offset in sorted(offsets):
        clock.current = start + timedelta(microseconds=offset)
        throttle.failed("ann")
    with pytest.raises(core.Throttled) as refused:
        throttle.check("ann")
    clock.advance(refused.value.retry_after)
    throttle.check("ann")


@given(usernames, passwords)
def test_failed_logins_through_authenticate_are_throttled(username: str, password: str) -> None:
    storage = MemoryStorage()
    core.register_user(storage, HASHER, username, password)
    clock = FakeClock()
    throttle = core.LoginThrottle(clock)
    for _ in range(LIMIT):
        with pytest.raises(core.AuthenticationFailed):
            core.authenticate(storage, HASHER, throttle, username, password + "!")
        clock.advance(1)
    # Even the right password is refused while throttled.
    with pytest.raises(core.Throttled) as refused:
        core.authenticate(storage, HASHER, throttle, username, password)
    assert 1 <= refused.value.retry_after <= WINDOW
    clock.advance(refused.value.retry_after)
    assert core.authenticate(storage, HASHER, throttle, username, password).username == username
