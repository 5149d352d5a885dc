"""A QUIC game client written with `aioquic`, driven by the `quic`
integration test: it logs in and enters over its first bidirectional
stream, moves by datagram and sees its own S_MOVE come back as a datagram,
then follows the test's orders on stdin.

Usage: quic_client.py HOST PORT CAFILE ACCOUNT
Prints `entered PLAYER_ID`, then `moved`; then reads lines on stdin:
- `chat N`: sends N chats `py0`.. over the stream;
- `expect SENDER PREFIX N`: waits for those chats (stream), prints `got PREFIX`;
- `expect_move PLAYER_ID`: waits for an S_MOVE of that player by datagram,
  prints `saw move PLAYER_ID`;
- `garbage`: sends a datagram that is not whole packets and one with a
  C_CHAT (both must be dropped by the server), prints `sent garbage`;
- `done`: closes with code 0, prints `ok STREAM_MOVES DATAGRAM_MOVES`;
- `oversize` (a datagram larger than the server takes) or `malformed` (a
  packet whose size is below its header's, on the stream): prints
  `ok STREAM_MOVES DATAGRAM_MOVES`, then waits for the server to close the
  connection and prints `terminated CODE REASON`.
An S_MOVE on the stream is counted: the test expects none.

Packets are `[size u16 LE][id u16 LE][protobuf body]`; the few fields used
are encoded by hand (`wire.py`) so that only `aioquic` is needed.
"""

import asyncio
import ssl
import struct
import sys

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, DatagramFrameReceived, StreamDataReceived

from wire import (C_CHAT, C_ENTER_GAME, C_LOGIN, C_MOVE, S_CHAT, S_ENTER_GAME, S_LOGIN,
                  S_MOVE, field_bytes, field_varint, packet, parse, split_packets)


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.buf = b""
        self.stream_packets = asyncio.Queue()
        self.datagram_packets = asyncio.Queue()
        self.stream_moves = 0
        self.datagram_moves = 0
        self.terminated = asyncio.get_event_loop().create_future()

    def quic_event_received(self, event):
        if isinstance(event, StreamDataReceived):
            self.buf += event.data
            while len(self.buf) >= 4:
                size, packet_id = struct.unpack_from("<HH", self.buf)
                if len(self.buf) < size:
                    break
                body, self.buf = self.buf[4:size], self.buf[size:]
                if packet_id == S_MOVE:
                    self.stream_moves += 1
                self.stream_packets.put_nowait((packet_id, parse(body)))
        elif isinstance(event, DatagramFrameReceived):
            for packet_id, fields in split_packets(event.data):
                assert packet_id == S_MOVE, f"only S_MOVE by datagram, got {packet_id}"
                self.datagram_moves += 1
                self.datagram_packets.put_nowait((packet_id, fields))
        elif isinstance(event, ConnectionTerminated):
            if not self.terminated.done():
                self.terminated.set_result(event)

    async def expect_stream(self, wanted):
        while True:
            packet_id, fields = await asyncio.wait_for(self.stream_packets.get(), 10)
            if packet_id == wanted:
                return fields

    async def expect_move(self, player_id):
        while True:
            _, fields = await asyncio.wait_for(self.datagram_packets.get(), 10)
            if parse(fields[1][0])[1] == [player_id]:
                return fields


async def main(host, port, cafile, account):
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=["servercore/1"],
        max_datagram_frame_size=65536,
        server_name="localhost",
        # Loopback carries large UDP datagrams: room for an oversized one.
        max_datagram_size=16000,
    )
    config.load_verify_locations(cafile)
    config.verify_mode = ssl.CERT_REQUIRED
    async with connect(host, port, configuration=config, create_protocol=Client) as client:
        quic = client._quic
        stream = quic.get_next_available_stream_id()

        def send_stream(data):
            quic.send_stream_data(stream, data)
            client.transmit()

        def send_datagram(data):
            quic.send_datagram_frame(data)
            client.transmit()

        send_stream(packet(C_LOGIN, field_bytes(1, account.encode())))
        login = await client.expect_stream(S_LOGIN)
        assert login.get(1) == [1], f"login failed: {login}"
        send_stream(packet(C_ENTER_GAME, field_varint(1, 0)))
        entered = await client.expect_stream(S_ENTER_GAME)
        assert entered.get(1) == [1], f"enter failed: {entered}"
        player_id = entered[2][0]
        print(f"entered {player_id}", flush=True)

        # A short move by datagram: its S_MOVE comes back by datagram with
        # this player's id, the position and the client_time_us sent.
        pos = parse(parse(entered[3][0]).get(3, [b""])[0])
        x = struct.unpack("<f", pos[2][0])[0] if 2 in pos else 0.0
        y = struct.unpack("<f", pos[3][0])[0] if 3 in pos else 0.0
        x = x + 1.0 if x < 100.0 else x - 1.0
        info = (b"\x15" + struct.pack("<f", x)) + (b"\x1d" + struct.pack("<f", y))
        send_datagram(packet(C_MOVE, field_bytes(1, info) + field_varint(2, 42)))
        moved = await client.expect_move(player_id)
        moved_info = parse(moved[1][0])
        assert struct.unpack("<f", moved_info[2][0])[0] == struct.unpack("<f", struct.pack("<f", x))[0]
        assert moved.get(2) == [42], f"client_time_us: {moved}"
        print("moved", flush=True)

        loop = asyncio.get_running_loop()
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
            if not line or line[0] == "done":
                break
            if line[0] in ("oversize", "malformed"):
                print(f"ok {client.stream_moves} {client.datagram_moves}", flush=True)
                if line[0] == "oversize":
                    send_datagram(packet(C_MOVE, b"\x00" * 8000))
                else:
                    send_stream(b"\x02\x00\x00\x00")
                ended = await asyncio.wait_for(client.terminated, 10)
                print(f"terminated {ended.error_code} {ended.reason_phrase}", flush=True)
                return
            if line[0] == "chat":
                for i in range(int(line[1])):
                    send_stream(packet(C_CHAT, field_bytes(1, f"py{i}".encode()) + field_varint(2, i)))
            elif line[0] == "expect":
                _, sender, prefix, n = line
                for i in range(int(n)):
                    chat = await client.expect_stream(S_CHAT)
                    got = (chat[1][0], chat[2][0].decode(), chat.get(3, [0])[0])
                    want = (int(sender), f"{prefix}{i}", i)
                    assert got == want, f"chat {i}: got {got}, want {want}"
                print(f"got {prefix}", flush=True)
            elif line[0] == "expect_move":
                await client.expect_move(int(line[1]))
                print(f"saw move {line[1]}", flush=True)
            elif line[0] == "garbage":
                send_datagram(b"\x09\x00\xf2\x03")
                send_datagram(packet(C_CHAT, field_bytes(1, b"by datagram") + field_varint(2, 99)))
                print("sent garbage", flush=True)
        moves = (client.stream_moves, client.datagram_moves)
        quic.close(error_code=0)
        client.transmit()
    print(f"ok {moves[0]} {moves[1]}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))
