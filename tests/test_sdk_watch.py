"""`nearby watch`: formatting, walking and the screen (no server)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import pytest
from nearby import FriendLeft, FriendMoved, NearbyClient, NearbyFriend, Reconnecting, Snapshot
from nearby.view import distance_m
from rich.console import Console

from mesh.settings import Settings
from stack import watch

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def test_distances_and_ages_read_naturally() -> None:
    assert watch.format_distance(849.6) == "850 m"
    assert watch.format_distance(2400) == "2.40 km"
    assert watch.format_distance(12_345) == "12.3 km"
    assert watch.format_age(T0, T0 + timedelta(milliseconds=300)) == "just now"
    assert watch.format_age(T0, T0 + timedelta(seconds=12)) == "12 s ago"
    assert watch.format_age(T0, T0 + timedelta(minutes=3, seconds=5)) == "3 min ago"
    assert watch.format_age(T0, T0 + timedelta(hours=2, minutes=1)) == "2 h ago"
    assert watch.format_age(T0 + timedelta(seconds=5), T0) == "just now"  # clock skew


@pytest.mark.parametrize("heading", [0.0, 90.0, 200.0, 315.0])
def test_a_walking_step_covers_the_requested_distance(heading: float) -> None:
    lat, lng = watch.step(52.52, 13.405, heading, 100.0)
    assert distance_m(52.52, 13.405, lat, lng) == pytest.approx(100.0, rel=1e-6)


def test_steps_wrap_around_the_antimeridian() -> None:
    lat, lng = watch.step(0.0, 179.9999, 90.0, 100.0)
    assert -180.0 <= lng < -179.99 and lat == pytest.approx(0.0, abs=1e-9)


def test_event_descriptions() -> None:
    f = NearbyFriend("bob", "Bob", 1.0, 2.0, 678.0, T0)
    assert watch.describe(Snapshot((f,), 1, "", 8047.0)) == "snapshot: 1 nearby within 8.05 km"
    assert watch.describe(FriendMoved(f, is_new=True)) == "Bob appeared, 678 m"
    assert watch.describe(FriendMoved(f)) == "Bob moved, 678 m"
    assert watch.describe(FriendLeft("bob", "HIDDEN")) == "bob left (HIDDEN)"
    assert "attempt 2" in watch.describe(Reconnecting(2, 1.5, "UNAVAILABLE"))


async def test_screen_before_connecting_shows_the_state_and_position() -> None:
    async with NearbyClient("127.0.0.1:1", "t", secure=False) as client:
        session = client.connect(52.52, 13.405)
        state = watch.WatchState("alice", "127.0.0.1:1", session)
        console = Console(record=True, width=100, color_system=None)
        console.print(watch.render(state, T0))
        text = console.export_text()
    assert "Nearby friends of alice: 0" in text
    assert "idle" in text and "52.52000, 13.40500" in text


def test_subject_is_read_from_the_token_for_display() -> None:
    # header.payload.signature with payload {"sub":"alice"}
    assert watch._subject("e30.eyJzdWIiOiJhbGljZSJ9.sig") == "alice"
    assert watch._subject("garbage") == "you"


def test_arguments() -> None:
    parser = argparse.ArgumentParser()
    watch.add_arguments(parser)
    args = parser.parse_args(["--token", "x", "--lat", "1.5", "--lng", "-2", "--walk"])
    assert (args.lat, args.lng, args.walk) == (1.5, -2.0, True)
    assert args.target == f"localhost:{Settings.from_env().envoy_port}"
    with pytest.raises(SystemExit):
        parser.parse_args(["--token", "x", "--user", "a", "--lat", "1", "--lng", "2"])
