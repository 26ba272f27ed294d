# -*- test-case-name: tests.test_drain_h2 -*-
"""
The private parts of Twisted's HTTP/2 server (C{twisted.web._http2}) and
of h2 that draining an HTTP/2 connection needs (L{goAwayHTTP2}), beside
L{_twistedcompat<twisted_serversock._twistedcompat>} and checked the same
way: L{http2Problems} (part of C{_twistedcompat.problems()}) says what the
installed versions no longer have.
"""

from __future__ import annotations

import sys
from typing import Any

from ._sourcetext import source as _source

__all__ = ["goAwayHTTP2", "http2Problems"]


def goAwayHTTP2(protocol: Any) -> bool:
    """
    If C{protocol} is C{twisted.web}'s HTTP/2 connection, end it
    gracefully and return C{True} (else return C{False}): send GOAWAY
    (C{NO_ERROR}, the last stream it received as the last one processed)
    at once, let the streams in progress finish (requests still sending
    their body included), and close the connection once none is left - at
    once if there is none.

    h2's C{close_connection()} makes the GOAWAY, but also moves its state
    machine to C{CLOSED}, after which it refuses to send a response or
    take a frame (U{https://github.com/python-hyper/h2/issues/1181}); its
    earlier state is put back.  A stream the client opens after the GOAWAY (it sent it before
    the GOAWAY reached it) is above the GOAWAY's last stream id: it is
    never handed to the site, but reset with C{REFUSED_STREAM}, so the
    client knows twice over that it was not processed and may safely
    retry it on a new connection; the connection's flow-control window
    still counts its data.  (Left to itself, h2 would have answered such a
    stream with a C{PROTOCOL_ERROR} GOAWAY, and Twisted would have cut
    every stream of the connection.)
    """
    http2 = sys.modules.get("twisted.web._http2")
    if http2 is None or not isinstance(protocol, http2.H2Connection):
        return False
    from h2.errors import ErrorCodes
    from h2.events import DataReceived, RequestReceived

    conn = protocol.conn
    last, state = conn.highest_inbound_stream_id, conn.state_machine.state
    conn.close_connection(error_code=ErrorCodes.NO_ERROR, last_stream_id=last)
    conn.state_machine.state = state
    receive = conn.receive_data

    def refuseNewStreams(data: bytes) -> list[Any]:
        kept = []
        for event in receive(data):
            if (getattr(event, "stream_id", 0) or 0) <= last:
                kept.append(event)
            elif isinstance(event, RequestReceived):
                conn.reset_stream(event.stream_id, ErrorCodes.REFUSED_STREAM)
            elif isinstance(event, DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        return kept

    conn.receive_data = refuseNewStreams

    def closeOnceIdle(streamID: Any = None) -> Any:
        if not protocol.streams and (transport := protocol.transport) is not None:
            while protocol._bufferedControlFrames:  # held back while the transport was paused
                transport.write(protocol._bufferedControlFrames.popleft())
            transport.unregisterProducer()  # (TLS closes only once its producer is gone)
            transport.loseConnection()
        return streamID

    if protocol._tryToWriteControlData():
        for ended in list(protocol._streamCleanupCallbacks.values()):
            ended.addCallback(closeOnceIdle)
        closeOnceIdle()
    return True


def http2Problems() -> list[str]:
    """What L{goAwayHTTP2} relies on that the installed Twisted and h2 no longer have (one line each)."""
    try:
        from h2.config import H2Configuration
        from h2.connection import H2Connection as Machine
        from twisted.web._http2 import H2Connection
    except ImportError:
        return []  # no h2: twisted.web speaks no HTTP/2, nothing to end
    found = []
    received, done = _source(H2Connection.dataReceived), _source(H2Connection._requestDone)
    if "self.conn.receive_data(" not in received or "for event in events" not in received:
        found.append("H2Connection.dataReceived no longer acts on what conn.receive_data returns (goAwayHTTP2)")
    if done.find("del self.streams[") > done.find("_streamCleanupCallbacks.pop(") or ".callback(" not in done:
        found.append("H2Connection._requestDone no longer fires _streamCleanupCallbacks after forgetting the stream (goAwayHTTP2)")
    if "def _tryToWriteControlData" not in _source(H2Connection):
        found.append("H2Connection has no _tryToWriteControlData any more (goAwayHTTP2)")
    if "self._bufferedControlFrames.popleft()" not in _source(H2Connection._flushBufferedControlData):
        found.append("H2Connection no longer holds control frames in _bufferedControlFrames (goAwayHTTP2)")
    server, client = Machine(H2Configuration(client_side=False)), Machine(H2Configuration(client_side=True))
    try:  # what goAwayHTTP2 does to h2, on a stream in progress
        client.initiate_connection()
        client.send_headers(1, [(":method", "GET"), (":path", "/"), (":scheme", "https"), (":authority", "x")], end_stream=True)
        server.initiate_connection()
        server.receive_data(client.data_to_send())
        state = server.state_machine.state
        server.close_connection(last_stream_id=server.highest_inbound_stream_id)
        server.state_machine.state = state
        server.send_headers(1, [(":status", "200")], end_stream=True)
    except Exception as e:
        found.append(f"h2 can no longer answer a stream after close_connection() with its state put back: {e} (goAwayHTTP2)")
    return found

