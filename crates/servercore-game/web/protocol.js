// The game protocol over WebSocket: every binary message carries one or
// more whole packets [size: u16 LE][id: u16 LE][protobuf body], size
// counting the 4-byte header, exactly as on the TCP port. Ids are assigned
// from 1000 in the order the C_/S_ messages appear in protocol.proto (the
// server's codegen does the same), so they are derived from the .proto the
// server serves rather than written down twice.

const HEADER_SIZE = 4;
const FIRST_ID = 1000;

/** The protocol: message types by name and id, parsed from the .proto text. */
export class Protocol {
  /** @param {string} protoText the contents of protocol.proto */
  constructor(protoText) {
    const parsed = protobuf.parse(protoText, { keepCase: true });
    this.root = parsed.root;
    this.byName = new Map();
    this.byId = new Map();
    const pkg = this.root.lookup(parsed.package);
    this.pkg = pkg;
    let id = FIRST_ID;
    for (const type of pkg.nestedArray) {
      if (!(type instanceof protobuf.Type)) continue;
      if (!type.name.startsWith("C_") && !type.name.startsWith("S_")) continue;
      this.byName.set(type.name, { id, type });
      this.byId.set(id, { name: type.name, type });
      id += 1;
    }
  }

  /**
   * The name of value `value` of enum `enumName` (e.g. "LoginRefusal"), or
   * undefined for a value this .proto does not know.
   */
  enumName(enumName, value) {
    return this.pkg.lookupEnum(enumName).valuesById[value];
  }

  /** One packet: header and body, ready to send. */
  encode(name, fields) {
    const entry = this.byName.get(name);
    if (!entry) throw new Error(`unknown message ${name}`);
    const body = entry.type.encode(entry.type.fromObject(fields)).finish();
    const size = HEADER_SIZE + body.length;
    if (size > 0xffff) throw new Error(`${name} too large: ${size} bytes`);
    const packet = new Uint8Array(size);
    const view = new DataView(packet.buffer);
    view.setUint16(0, size, true);
    view.setUint16(2, entry.id, true);
    packet.set(body, HEADER_SIZE);
    return packet;
  }

  /**
   * Splits one WebSocket message into packets and decodes each.
   * @returns {{name: string, msg: object}[]}
   */
  decodeAll(buffer) {
    const bytes = new Uint8Array(buffer);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const out = [];
    let at = 0;
    while (at + HEADER_SIZE <= bytes.length) {
      const size = view.getUint16(at, true);
      const id = view.getUint16(at + 2, true);
      if (size < HEADER_SIZE || at + size > bytes.length) {
        throw new Error(`malformed packet at ${at}: size ${size}`);
      }
      const entry = this.byId.get(id);
      if (entry) {
        const decoded = entry.type.decode(bytes.subarray(at + HEADER_SIZE, at + size));
        out.push({
          name: entry.name,
          msg: entry.type.toObject(decoded, { longs: Number, defaults: true, arrays: true }),
        });
      }
      at += size;
    }
    if (at !== bytes.length) throw new Error("a message ended inside a packet");
    return out;
  }
}
