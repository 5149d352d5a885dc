"""A WebSocket game client written with the `websockets` library, driven by
the `transport` integration test: it logs in, enters, chats, and checks that
its own chats and a TCP player's chats reach it in order.

Usage: ws_client.py URL ACCOUNT COUNT
Prints `entered PLAYER_ID` once in game, then reads `expect PLAYER_ID PREFIX
N` lines on stdin and waits for those chats; prints `ok` at the end.

Packets are `[size u16 LE][id u16 LE][protobuf body]`; the few fields used
are encoded here by hand so that only `websockets` is needed.
"""

import asyncio
import struct
import sys

import websockets

C_LOGIN, S_LOGIN, C_ENTER_GAME, S_ENTER_GAME, C_CHAT, S_CHAT = range(1000, 1006)


def varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_varint(number, value):
    return varint(number << 3) + varint(value)


def field_bytes(number, data):
    return varint((number << 3) | 2) + varint(len(data)) + data


def packet(packet_id, body):
    return struct.pack("<HH", len(body) + 4, packet_id) + body


def parse(body):
    """Protobuf fields as {number: [values]} (varints and byte strings)."""
    fields, at = {}, 0
    while at < len(body):
        key, at = read_varint(body, at)
        number, kind = key >> 3, key & 7
        if kind == 0:
            value, at = read_varint(body, at)
        elif kind == 2:
            length, at = read_varint(body, at)
            value, at = body[at:at + length], at + length
        elif kind == 5:
            value, at = body[at:at + 4], at + 4
        elif kind == 1:
            value, at = body[at:at + 8], at + 8
        else:
            raise ValueError(f"wire type {kind}")
        fields.setdefault(number, []).append(value)
    return fields


def read_varint(data, at):
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


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
