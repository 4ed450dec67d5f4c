"""Tumbling windows: per shard, handler state carried from call to call within a window.

Windows are cut by record arrival time (Lambda's rule). The state is kept with the
checkpoint, so a restart resumes the window where it was; the last call of a window is final.
"""

from __future__ import annotations

from typing import Any

import msgspec

#: Seconds after a window's end before an idle shard makes the window's final call: records
#: that arrived just before the end may still be on their way to the reader.
FINAL_CALL_GRACE = 1.0

#: Lambda's limit on a shard's window state; a larger state ends the window early.
MAX_STATE_BYTES = 1024 * 1024


class WindowState(msgspec.Struct):
    """The open window of a shard: where it starts, and the state the handler returned last."""

    start: float
    size: float
    state: Any = None
    terminated_early: bool = False

    @property
    def end(self) -> float:
        return self.start + self.size

    @property
    def bounds(self) -> tuple[float, float]:
        return (self.start, self.end)

    def keep(self, state: Any) -> None:
        """Carry ``state`` to the next call; a state over the limit is dropped (window ends early)."""
        if state is not None and len(msgspec.json.encode(state)) > MAX_STATE_BYTES:
            self.state = None
            self.terminated_early = True
            return
        self.state = state
        self.terminated_early = False


# JSON: a window's state is JSON for Lambda-style handlers anyway, and it may hold big integers.
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(WindowState).decode


def dump(window: WindowState | None) -> bytes | None:
    return None if window is None else _encode(window)


def load(blob: bytes | None, size: float) -> WindowState | None:
    if not blob or size <= 0:
        return None
    window = _decode(blob)
    return window if window.size == size else None  # a changed window size starts afresh
