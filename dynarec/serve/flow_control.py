"""Back-pressure of one HTTP connection: the transport stops reading while any reason to hold back holds (too
many answers owed, the write buffer above its high-water mark, a refusal being sent) and reads again when none
does, so a client that pipelines without reading its answers fills its own socket buffers, not the server's memory.

Example::

    flow = FlowControl(transport)
    flow.pause(PIPELINE)   # reading stops
    flow.pause(WRITE)
    flow.resume(PIPELINE)  # still paused: WRITE holds
    flow.resume(WRITE)     # reading again
"""
from __future__ import annotations

PIPELINE = 1  # max_pipelined answers owed on the connection
WRITE = 2  # the transport's write buffer is above its high-water mark (asyncio's pause_writing)
REFUSED = 4  # a refusal is queued behind earlier answers: nothing more is read until it has been sent


class FlowControl:
    """Why reading is paused (a bit per reason); ``transport.pause_reading`` / ``resume_reading`` only on a change."""

    __slots__ = ("transport", "reasons")

    def __init__(self, transport):
        self.transport = transport
        self.reasons = 0

    def pause(self, reason: int) -> None:
        if not self.reasons and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self.reasons |= reason

    def resume(self, reason: int) -> None:
        if not self.reasons & reason:
            return
        self.reasons &= ~reason
        if not self.reasons and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    @property
    def writing_paused(self) -> bool:
        return bool(self.reasons & WRITE)
