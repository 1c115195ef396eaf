"""The suite itself."""

from collections import Counter

import pytest


def test_every_collected_test_has_a_node_id_of_its_own(request: pytest.FixtureRequest) -> None:
    """pytest-xdist schedules tests by node id (make test's --dist loadgroup):
    tests sharing one would run as one, and the others be lost unseen."""
    shared = [nodeid for nodeid, count in Counter(item.nodeid for item in request.session.items).items() if count > 1]
    assert shared == []
