"""`iotbridge demo` leaves nothing behind, even when the stop signal comes at an awkward time."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from bridge.dev import demo
from bridge.dev.mosquitto import Mosquitto


def test_a_stop_signal_as_the_broker_directory_is_made_leaves_no_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The signal arrives just after the broker's temporary directory exists and before the
    demo holds the broker: it used to leave the directory behind."""
    made: list[Path] = []

    class Signalled(Mosquitto):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self._dir)
            # To this thread: a signal for the process may go to any thread that lets it in.
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

    monkeypatch.setattr(demo, "Mosquitto", Signalled)
    saved = {signum: signal.getsignal(signum) for signum in demo.STOP_SIGNALS}
    try:
        assert demo.run_demo(mqtt_port=0, http_port=0) == 0
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    [directory] = made
    assert not directory.exists()
