import pytest


@pytest.fixture
def closing():
    """Things a test started (coordinators, edges, channels), stopped in reverse order at its end."""
    things = []
    yield things.append
    for thing in reversed(things):
        try:
            thing.close() if hasattr(thing, "close") else thing.stop(1.0)
        except Exception:
            pass
