// servercore's browser client: log in, enter the world, see the players
// around you on a canvas (S_SPAWN / S_DESPAWN / S_MOVE), move with WASD or
// the arrow keys (C_MOVE), and chat with everyone in the game (C_CHAT).
//
// The WebSocket address defaults to this page's own host, path /ws;
// `?ws=ws://host:port/ws` picks another. With `?transport=wt` it plays
// over WebTransport instead, where the browser has it and the server offers
// it (`/config.json` names the QUIC port and the certificate's SHA-256):
// packets on one bidirectional stream, moves as datagrams both ways; else
// it falls back to WebSocket. `window.servercore` exposes the client's
// state for people poking at it in the console (and for tests), with the
// transport used (`state.transport`: "ws" or "wt").

import { Protocol } from "./protocol.js";

const MOVE_INTERVAL_MS = 100; // 10 moves a second while a key is held
const SPEED = 150; // world units per second, below the server's max speed
const VIEW = 500; // world units across the canvas
const CELL_DEFAULT = 100;

const $ = (id) => document.getElementById(id);

const state = {
  status: "offline",
  account: "",
  selfId: null,
  self: null, // {x, y, yaw}
  players: new Map(), // object id -> {id, name, x, y, yaw}
  chats: [], // {playerId, name, msg}
  worldSize: 2000,
  cell: CELL_DEFAULT,
  received: 0,
  datagramsReceived: 0,
  transport: null,
  errors: [],
  transfer: null, // {node, wsUrl, token} after S_TRANSFER, until followed
  followed: [], // the nodes it was handed over to, in order
};
window.servercore = state;

let protocol = null;
let socket = null;
// The WebTransport connection, when the page plays over it.
let wt = null;
// What /config.json says of the server's WebTransport endpoint.
let webTransportInfo = null;
const keys = new Set();
let lastMove = 0;

function setStatus(status, text) {
  state.status = status;
  const badge = $("status");
  badge.dataset.state = status;
  badge.textContent = text ?? status.replace("_", " ");
}

function wsUrl() {
  const asked = new URLSearchParams(location.search).get("ws");
  if (asked) return asked;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

function send(name, fields) {
  if (wt) {
    const packet = protocol.encode(name, fields);
    // A move is worth nothing late: it goes unreliably, the rest in order.
    const writer = name === "C_MOVE" ? wt.datagrams : wt.stream;
    writer.write(packet).catch((error) => state.errors.push(String(error)));
    return;
  }
  if (!socket || socket.readyState !== WebSocket.OPEN) return;
  socket.send(protocol.encode(name, fields));
}

function connected() {
  return wt !== null || (socket !== null && socket.readyState <= WebSocket.OPEN);
}

function closed(text) {
  setStatus("offline", text);
  $("chat-input").disabled = true;
  $("chat-send").disabled = true;
  state.players.clear();
}

function onBytes(bytes) {
  try {
    for (const packet of protocol.decodeAll(bytes)) onPacket(packet);
  } catch (error) {
    state.errors.push(String(error));
    console.error(error);
  }
}

function wantsWebTransport() {
  return new URLSearchParams(location.search).get("transport") === "wt";
}

function hexBytes(hex) {
  return Uint8Array.from(hex.match(/../g).map((byte) => parseInt(byte, 16)));
}

/** Plays over WebTransport; false if it could not be opened. */
async function connectWebTransport(account) {
  const info = webTransportInfo;
  const url = `https://${location.hostname}:${info.port}${info.path}`;
  let transport;
  try {
    transport = new WebTransport(url, {
      serverCertificateHashes: [{ algorithm: "sha-256", value: hexBytes(info.cert_sha256) }],
    });
    await transport.ready;
  } catch (error) {
    state.errors.push(`webtransport: ${error}`);
    return false;
  }
  const stream = await transport.createBidirectionalStream();
  wt = {
    transport,
    stream: stream.writable.getWriter(),
    datagrams: transport.datagrams.writable.getWriter(),
  };
  state.transport = "wt";
  setStatus("logging_in", "logging in");
  send("C_LOGIN", { account });
  // The stream: bytes in any cut; whole packets are decoded.
  (async () => {
    const reader = stream.readable.getReader();
    let pending = new Uint8Array(0);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const joined = new Uint8Array(pending.length + value.length);
      joined.set(pending);
      joined.set(value, pending.length);
      const view = new DataView(joined.buffer);
      let end = 0;
      while (end + 4 <= joined.length) {
        const size = view.getUint16(end, true);
        if (size < 4 || end + size > joined.length) break;
        end += size;
      }
      if (end > 0) onBytes(joined.subarray(0, end));
      pending = joined.slice(end);
    }
  })().catch((error) => state.errors.push(`stream: ${error}`));
  // Datagrams: whole S_MOVE packets, one or more each.
  (async () => {
    const reader = transport.datagrams.readable.getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      state.datagramsReceived += 1;
      onBytes(value);
    }
  })().catch(() => {});
  transport.closed
    .then((info) => {
      wt = null;
      closed(`disconnected (${info.closeCode ?? 0})`);
      systemLine(`connection closed: ${info.reason ?? ""}`);
    })
    .catch((error) => {
      wt = null;
      closed("disconnected");
      systemLine(`connection closed: ${error}`);
    });
  return true;
}

function systemLine(text) {
  const li = document.createElement("li");
  li.className = "system";
  li.textContent = text;
  $("chat-log").append(li);
  li.scrollIntoView({ block: "end" });
}

function nameOf(id) {
  if (id === state.selfId) return state.account || "me";
  return state.players.get(id)?.name || `#${id}`;
}

/** Why the server refused a login (S_LOGIN.reason), as ": why", or "". */
function refusalText(reason) {
  const why = {
    LOGIN_REFUSAL_ALREADY_LOGGED_IN: "already logged in",
    LOGIN_REFUSAL_BAD_TOKEN: "the server wants a signed token",
    LOGIN_REFUSAL_ACCOUNT_NAME_TOO_LONG: "the account name is too long",
    LOGIN_REFUSAL_ACCOUNT_LIMIT: "too many new accounts from this address; try again in a minute",
    LOGIN_REFUSAL_TOO_MANY_CONNECTIONS: "too many connections from this address",
    LOGIN_REFUSAL_DATABASE_UNAVAILABLE: "the server's database is down",
    LOGIN_REFUSAL_SERVER_ERROR: "the server failed",
    LOGIN_REFUSAL_ACCOUNT_IN_USE: "the account is playing on another server; try again shortly",
  }[protocol.enumName("LoginRefusal", reason)];
  return why ? `: ${why}` : "";
}

function onPacket({ name, msg }) {
  state.received += 1;
  switch (name) {
    case "S_LOGIN":
      if (!msg.success || msg.players.length === 0) {
        setStatus("offline", `login refused${refusalText(msg.reason)}`);
        if (wt) wt.transport.close();
        else socket.close();
        return;
      }
      setStatus("entering");
      send("C_ENTER_GAME", { player_index: 0 });
      break;
    case "S_ENTER_GAME": {
      if (!msg.success) {
        setStatus("offline", "enter refused");
        return;
      }
      state.selfId = msg.player_id;
      const pos = msg.player?.pos_info ?? {};
      state.self = { x: pos.x ?? 0, y: pos.y ?? 0, yaw: pos.yaw ?? 0 };
      setStatus("in_game", "in game");
      $("chat-input").disabled = false;
      $("chat-send").disabled = false;
      $("map").focus();
      systemLine(`entered the world at (${state.self.x.toFixed(0)}, ${state.self.y.toFixed(0)})`);
      break;
    }
    case "S_SPAWN":
      for (const obj of msg.players) {
        const pos = obj.pos_info ?? {};
        if (obj.object_id === state.selfId) continue;
        state.players.set(obj.object_id, {
          id: obj.object_id,
          name: obj.name,
          x: pos.x ?? 0,
          y: pos.y ?? 0,
          yaw: pos.yaw ?? 0,
        });
      }
      break;
    case "S_DESPAWN":
      for (const id of msg.object_ids) state.players.delete(id);
      break;
    case "S_MOVE": {
      const info = msg.info ?? {};
      if (info.object_id === state.selfId) {
        state.self = { x: info.x, y: info.y, yaw: info.yaw };
      } else {
        const seen = state.players.get(info.object_id);
        if (seen) Object.assign(seen, { x: info.x, y: info.y, yaw: info.yaw });
      }
      break;
    }
    case "S_CHAT": {
      const entry = { playerId: msg.player_id, name: nameOf(msg.player_id), msg: msg.msg };
      state.chats.push(entry);
      const li = document.createElement("li");
      if (msg.player_id === state.selfId) li.className = "me";
      const who = document.createElement("span");
      who.className = "who";
      who.textContent = entry.name;
      li.append(who, document.createTextNode(msg.msg));
      $("chat-log").append(li);
      li.scrollIntoView({ block: "end" });
      break;
    }
    case "S_TRANSFER":
      // Handed over to the node owning where the player walked (one world
      // across nodes): followed once this node closes the connection.
      state.transfer = { node: msg.node, wsUrl: msg.ws_url, token: msg.token };
      systemLine(`handed over to ${msg.node}`);
      break;
    case "S_LEAVE_GAME":
      setStatus("logged_in", "left the game");
      state.players.clear();
      break;
    default:
      break;
  }
}

async function connect(account) {
  state.account = account;
  setStatus("connecting");
  if (wantsWebTransport() && typeof WebTransport !== "undefined" && webTransportInfo) {
    if (await connectWebTransport(account)) return;
    systemLine("WebTransport failed; falling back to WebSocket");
  }
  openSocket(wsUrl(), account);
}

/** Plays over the WebSocket at `url`, logging in as `login` (an account
 * name, or the token of a transfer). */
function openSocket(url, login) {
  state.transport = "ws";
  state.transfer = null;
  socket = new WebSocket(url, "servercore");
  socket.binaryType = "arraybuffer";
  socket.onopen = () => {
    setStatus("logging_in", "logging in");
    send("C_LOGIN", { account: login });
  };
  socket.onmessage = (event) => {
    try {
      for (const packet of protocol.decodeAll(event.data)) onPacket(packet);
    } catch (error) {
      state.errors.push(String(error));
      console.error(error);
    }
  };
  socket.onclose = (event) => {
    const transfer = state.transfer;
    if (transfer && transfer.wsUrl) {
      // The new node shows everyone anew: the view starts empty.
      state.players.clear();
      state.followed.push(transfer.node);
      setStatus("connecting", `moving to ${transfer.node}`);
      openSocket(transfer.wsUrl, transfer.token);
      return;
    }
    setStatus("offline", `disconnected (${event.code})`);
    $("chat-input").disabled = true;
    $("chat-send").disabled = true;
    state.players.clear();
    systemLine(`connection closed: code ${event.code} ${event.reason}`);
  };
  socket.onerror = () => state.errors.push("websocket error");
}

function step(now) {
  if (state.status === "in_game" && state.self && now - lastMove >= MOVE_INTERVAL_MS) {
    let dx = 0;
    let dy = 0;
    if (keys.has("ArrowLeft") || keys.has("a")) dx -= 1;
    if (keys.has("ArrowRight") || keys.has("d")) dx += 1;
    if (keys.has("ArrowUp") || keys.has("w")) dy -= 1;
    if (keys.has("ArrowDown") || keys.has("s")) dy += 1;
    if (dx !== 0 || dy !== 0) {
      const len = Math.hypot(dx, dy);
      const dist = (SPEED * Math.min(now - lastMove, 250)) / 1000;
      const x = Math.min(Math.max(state.self.x + (dx / len) * dist, 0), state.worldSize - 0.01);
      const y = Math.min(Math.max(state.self.y + (dy / len) * dist, 0), state.worldSize - 0.01);
      const yaw = (Math.atan2(dy, dx) * 180) / Math.PI;
      send("C_MOVE", {
        info: { x, y, z: 0, yaw, state: 2 },
        client_time_us: Math.round(performance.timeOrigin * 1000 + now * 1000),
      });
    }
    lastMove = now;
  }
  draw();
  requestAnimationFrame(step);
}

function draw() {
  const canvas = $("map");
  const ctx = canvas.getContext("2d");
  const scale = canvas.width / VIEW;
  ctx.fillStyle = "#0c0e11";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (!state.self) {
    ctx.fillStyle = "#666";
    ctx.font = "16px system-ui";
    ctx.fillText("log in to enter the world", 20, 30);
    return;
  }
  const originX = state.self.x - VIEW / 2;
  const originY = state.self.y - VIEW / 2;
  const toScreen = (x, y) => [(x - originX) * scale, (y - originY) * scale];

  // The map's edge and its cells; the 3x3 block this player sees is lit.
  const cell = state.cell;
  const myCellX = Math.floor(state.self.x / cell);
  const myCellY = Math.floor(state.self.y / cell);
  ctx.fillStyle = "#15221a";
  const [bx, by] = toScreen((myCellX - 1) * cell, (myCellY - 1) * cell);
  ctx.fillRect(bx, by, 3 * cell * scale, 3 * cell * scale);
  ctx.strokeStyle = "#222831";
  ctx.lineWidth = 1;
  for (let c = Math.floor(originX / cell); c * cell <= originX + VIEW; c++) {
    const [sx] = toScreen(c * cell, 0);
    ctx.beginPath();
    ctx.moveTo(sx, 0);
    ctx.lineTo(sx, canvas.height);
    ctx.stroke();
  }
  for (let r = Math.floor(originY / cell); r * cell <= originY + VIEW; r++) {
    const [, sy] = toScreen(0, r * cell);
    ctx.beginPath();
    ctx.moveTo(0, sy);
    ctx.lineTo(canvas.width, sy);
    ctx.stroke();
  }
  ctx.strokeStyle = "#a55";
  ctx.lineWidth = 2;
  const [ex, ey] = toScreen(0, 0);
  ctx.strokeRect(ex, ey, state.worldSize * scale, state.worldSize * scale);

  ctx.font = "12px system-ui";
  for (const p of state.players.values()) {
    const [sx, sy] = toScreen(p.x, p.y);
    ctx.fillStyle = "#5af";
    ctx.beginPath();
    ctx.arc(sx, sy, 6, 0, Math.PI * 2);
    ctx.fill();
    ctx.fillStyle = "#bbb";
    ctx.fillText(p.name || `#${p.id}`, sx + 8, sy - 8);
  }
  const [mx, my] = toScreen(state.self.x, state.self.y);
  ctx.fillStyle = "#6f6";
  ctx.beginPath();
  ctx.arc(mx, my, 8, 0, Math.PI * 2);
  ctx.fill();
  ctx.fillStyle = "#efe";
  ctx.fillText(state.account || "me", mx + 10, my - 10);
  $("position").textContent =
    `you: (${state.self.x.toFixed(0)}, ${state.self.y.toFixed(0)}), ` +
    `cell (${myCellX}, ${myCellY}); ${state.players.size} players in sight`;
}

async function main() {
  const [proto, world] = await Promise.all([
    fetch("protocol.proto").then((r) => r.text()),
    fetch("config.json").then((r) => (r.ok ? r.json() : {})).catch(() => ({})),
  ]);
  protocol = new Protocol(proto);
  if (world.world_size > 0) state.worldSize = world.world_size;
  if (world.cell > 0) state.cell = world.cell;
  if (world.web_transport) webTransportInfo = world.web_transport;
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    if (connected()) return;
    connect($("account").value.trim()).catch((error) => state.errors.push(String(error)));
  });
  $("chat").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("chat-input").value.trim();
    if (!text) return;
    send("C_CHAT", { msg: text, client_time_us: Math.round(Date.now() * 1000) });
    $("chat-input").value = "";
  });
  const movementKeys = ["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown", "w", "a", "s", "d"];
  const keyName = (event) => (event.key.length === 1 ? event.key.toLowerCase() : event.key);
  $("map").addEventListener("keydown", (event) => {
    const key = keyName(event);
    if (movementKeys.includes(key)) {
      keys.add(key);
      event.preventDefault();
    }
  });
  $("map").addEventListener("keyup", (event) => keys.delete(keyName(event)));
  $("map").addEventListener("blur", () => keys.clear());
  setStatus("offline");
  requestAnimationFrame(step);
}

main().catch((error) => {
  state.errors.push(String(error));
  setStatus("offline", "failed to start");
  console.error(error);
});
