"""A WebSocket game client written with the `websockets` library, driven by
the `transport` integration test: it logs in, enters, chats, and checks that
its own chats and a TCP player's chats reach it in order.

Usage: ws_client.py URL ACCOUNT COUNT
Prints `entered PLAYER_ID` once in game, then reads `expect PLAYER_ID PREFIX
N` lines on stdin and waits for those chats; prints `ok` at the end.

Packets are `[size u16 LE][id u16 LE][protobuf body]`; the few fields used
are encoded by hand (`wire.py`) so that only `websockets` is needed.
"""

import asyncio
import struct
import sys

import websockets

from wire import (C_CHAT, C_ENTER_GAME, C_LOGIN, C_MOVE, S_CHAT, S_ENTER_GAME, S_LOGIN,
                  S_MOVE, field_bytes, field_varint, packet, parse)


class Packets:
    """Splits the concatenated binary message payloads into packets."""

    def __init__(self, ws):
        self.ws, self.buf = ws, b""

    async def next(self):
        while True:
            if len(self.buf) >= 4:
                size, packet_id = struct.unpack_from("<HH", self.buf)
                if len(self.buf) >= size:
                    body, self.buf = self.buf[4:size], self.buf[size:]
                    return packet_id, parse(body)
            message = await asyncio.wait_for(self.ws.recv(), 10)
            assert isinstance(message, bytes), "the server sends binary messages"
            self.buf += message

    async def expect(self, wanted):
        while True:
            packet_id, fields = await self.next()
            if packet_id == wanted:
                return fields


async def main(url, account, count):
    async with websockets.connect(url, subprotocols=["servercore"]) as ws:
        assert ws.subprotocol == "servercore", ws.subprotocol
        packets = Packets(ws)
        await ws.send(packet(C_LOGIN, field_bytes(1, account.encode())))
        login = await packets.expect(S_LOGIN)
        assert login.get(1) == [1], f"login failed: {login}"
        await ws.send(packet(C_ENTER_GAME, field_varint(1, 0)))
        entered = await packets.expect(S_ENTER_GAME)
        assert entered.get(1) == [1], f"enter failed: {entered}"
        player_id = entered[2][0]
        print(f"entered {player_id}", flush=True)

        # A short move: the server's S_MOVE comes back with the same
        # position, this player's id and the client_time_us it was sent.
        pos = parse(parse(entered[3][0]).get(3, [b""])[0])
        x = struct.unpack("<f", pos[2][0])[0] if 2 in pos else 0.0
        y = struct.unpack("<f", pos[3][0])[0] if 3 in pos else 0.0
        x = x + 1.0 if x < 1000.0 else x - 1.0
        info = (b"\x15" + struct.pack("<f", x)) + (b"\x1d" + struct.pack("<f", y))
        await ws.send(packet(C_MOVE, field_bytes(1, info) + field_varint(2, 42)))
        moved = await packets.expect(S_MOVE)
        moved_info = parse(moved[1][0])
        assert moved_info[1] == [player_id], f"S_MOVE of {moved_info}"
        assert struct.unpack("<f", moved_info[2][0])[0] == struct.unpack("<f", struct.pack("<f", x))[0]
        assert moved.get(2) == [42], f"client_time_us: {moved}"
        print("moved", flush=True)

        # One packet per message, then two packets in one message, then a
        # packet split over two messages.
        chats = [packet(C_CHAT, field_bytes(1, f"py{i}".encode()) + field_varint(2, i))
                 for i in range(count)]
        for chat in chats[:-3]:
            await ws.send(chat)
        await ws.send(chats[-3] + chats[-2])
        await ws.send(chats[-1][:3])
        await ws.send(chats[-1][3:])

        loop = asyncio.get_running_loop()
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
            if not line or line[0] == "done":
                break
            _, sender, prefix, n = line
            for i in range(int(n)):
                chat = await packets.expect(S_CHAT)
                got = (chat[1][0], chat[2][0].decode(), chat.get(3, [0])[0])
                want = (int(sender), f"{prefix}{i}", i)
                assert got == want, f"chat {i}: got {got}, want {want}"
            print(f"got {prefix}", flush=True)
        await ws.close(code=1000)
    print("ok", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
