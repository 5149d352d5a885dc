"""A WebTransport game client written with `aioquic`'s HTTP/3, driven by
the `quic` integration test: a CONNECT to a path the server does not serve
gets 404; one to /wt opens the session, whose bidirectional stream carries
login and enter, and whose datagrams carry the move and its S_MOVE.

Usage: wt_client.py HOST PORT CAFILE ACCOUNT
Prints `refused 404`, `entered PLAYER_ID`, `moved`, then `ok`.
"""

import asyncio
import ssl
import struct
import sys

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, FrameType, H3Connection
from aioquic.h3.events import DatagramReceived, HeadersReceived, WebTransportStreamDataReceived
from aioquic.quic.configuration import QuicConfiguration

from quic_client import (C_ENTER_GAME, C_LOGIN, C_MOVE, S_ENTER_GAME, S_LOGIN, S_MOVE,
                         field_bytes, field_varint, packet, parse, split_packets)


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic, enable_webtransport=True)
        self.headers = {}
        self.buf = b""
        self.stream_packets = asyncio.Queue()
        self.datagram_packets = asyncio.Queue()

    def quic_event_received(self, event):
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                waiter = self.headers.get(h3_event.stream_id)
                if waiter and not waiter.done():
                    waiter.set_result(dict(h3_event.headers))
            elif isinstance(h3_event, WebTransportStreamDataReceived):
                self.buf += h3_event.data
                while len(self.buf) >= 4:
                    size, packet_id = struct.unpack_from("<HH", self.buf)
                    if len(self.buf) < size:
                        break
                    body, self.buf = self.buf[4:size], self.buf[size:]
                    self.stream_packets.put_nowait((packet_id, parse(body)))
            elif isinstance(h3_event, DatagramReceived):
                for packet_id, fields in split_packets(h3_event.data):
                    assert packet_id == S_MOVE, f"only S_MOVE by datagram, got {packet_id}"
                    self.datagram_packets.put_nowait(fields)

    async def connect_path(self, path):
        stream = self._quic.get_next_available_stream_id()
        self.headers[stream] = asyncio.get_running_loop().create_future()
        self.h3.send_headers(stream, [
            (b":method", b"CONNECT"), (b":scheme", b"https"), (b":authority", b"localhost"),
            (b":path", path.encode()), (b":protocol", b"webtransport"),
        ])
        self.transmit()
        headers = await asyncio.wait_for(self.headers[stream], 10)
        return stream, headers[b":status"].decode()

    async def expect_stream(self, wanted):
        while True:
            packet_id, fields = await asyncio.wait_for(self.stream_packets.get(), 10)
            if packet_id == wanted:
                return fields


async def main(host, port, cafile, account):
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN,
                               max_datagram_frame_size=65536, server_name="localhost")
    config.load_verify_locations(cafile)
    config.verify_mode = ssl.CERT_REQUIRED
    async with connect(host, port, configuration=config, create_protocol=Client) as client:
        _, status = await client.connect_path("/nope")
        print(f"refused {status}", flush=True)
        session, status = await client.connect_path("/wt")
        assert status == "200", f"CONNECT /wt: {status}"
        stream = client.h3.create_webtransport_stream(session, is_unidirectional=False)
        # aioquic reads the server's bytes on a stream it opened as HTTP
        # frames unless told it is a WebTransport stream.
        with client.h3._get_or_create_stream(stream) as h3_stream:
            h3_stream.frame_type = FrameType.WEBTRANSPORT_STREAM
            h3_stream.session_id = session

        def send_stream(data):
            client._quic.send_stream_data(stream, data)
            client.transmit()

        send_stream(packet(C_LOGIN, field_bytes(1, account.encode())))
        login = await client.expect_stream(S_LOGIN)
        assert login.get(1) == [1], f"login failed: {login}"
        send_stream(packet(C_ENTER_GAME, field_varint(1, 0)))
        entered = await client.expect_stream(S_ENTER_GAME)
        assert entered.get(1) == [1], f"enter failed: {entered}"
        player_id = entered[2][0]
        print(f"entered {player_id}", flush=True)
        pos = parse(parse(entered[3][0]).get(3, [b""])[0])
        x = struct.unpack("<f", pos[2][0])[0] if 2 in pos else 0.0
        y = struct.unpack("<f", pos[3][0])[0] if 3 in pos else 0.0
        x = x + 1.0 if x < 100.0 else x - 1.0
        info = (b"\x15" + struct.pack("<f", x)) + (b"\x1d" + struct.pack("<f", y))
        client.h3.send_datagram(session, packet(C_MOVE, field_bytes(1, info) + field_varint(2, 77)))
        client.transmit()
        while True:
            moved = await asyncio.wait_for(client.datagram_packets.get(), 10)
            if parse(moved[1][0])[1] == [player_id]:
                break
        assert moved.get(2) == [77], f"client_time_us: {moved}"
        print("moved", flush=True)
        client._quic.close(error_code=0)
        client.transmit()
    print("ok", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))
