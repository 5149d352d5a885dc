"""The game's wire format for the outside test clients (`ws_client.py`,
`quic_client.py`, `wt_client.py`): packets are `[size u16 LE][id u16 LE]
[protobuf body]`; the few protobuf fields the clients use are encoded and
decoded here by hand, so that each client needs only its transport's
library.
"""

import struct

C_LOGIN, S_LOGIN, C_ENTER_GAME, S_ENTER_GAME, C_CHAT, S_CHAT = range(1000, 1006)
C_MOVE, S_MOVE = 1010, 1011


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


def read_varint(data, at):
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


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


def split_packets(data):
    """Whole packets of `data` as [(id, fields)]; asserts nothing is left."""
    out, at = [], 0
    while at < len(data):
        size, packet_id = struct.unpack_from("<HH", data, at)
        assert size >= 4 and at + size <= len(data), f"a split packet in a datagram: {data!r}"
        out.append((packet_id, parse(data[at + 4:at + size])))
        at += size
    return out
