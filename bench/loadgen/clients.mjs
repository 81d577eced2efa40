// WebSocket load clients for bench/*.py, in a process of their own so that the server under
// test shares nothing with them. One process opens many connections and speaks one of three
// protocols to the same workload:
//   mangu     this server (docs/protocol.md): JWT in the query, join:room, message:send
//   bare      the bare Tornado broadcast reference: raw text echoed to every connection
//   socketio  python-socketio over Engine.IO v4 websocket transport, events in a room
//
// Roles:
//   members    open --count connections into --room, then record every room message:
//              its latency (sent timestamp carried in the text) and its id (to find loss
//              and duplicates). Prints {"ready": n} once all joined, and its stats as one
//              JSON line on SIGTERM / on stdin "stop".
//   publisher  one connection in the room; sends --messages messages of ~--size bytes, each
//              after its own copy came back. Prints its stats and exits.
//   idle       open --count authenticated connections, each joined to --room; prints
//              {"ready": n} and holds them until stopped.
//
// Usage: node clients.mjs --role members --proto mangu --url ws://127.0.0.1:3001/ws \
//          --count 500 --room bench --secret S [--sender-prefix m0-]

import crypto from "node:crypto";
import WebSocket from "ws";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => {
    if (arg.startsWith("--")) pairs.push([arg.slice(2), all[i + 1]]);
    return pairs;
  }, []),
);
const role = args.role;
const proto = args.proto || "mangu";
const url = args.url;
const count = Number(args.count || 1);
const room = args.room || "bench";
const messages = Number(args.messages || 200);
const size = Number(args.size || 100);
const prefix = args["user-prefix"] || "u";
const concurrency = Number(args.concurrency || 200);

const now = () => Number(process.hrtime.bigint()) / 1e6; // ms, CLOCK_MONOTONIC: comparable across processes

function b64url(data) {
  return Buffer.from(data).toString("base64").replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
}

function token(sub) {
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const exp = Math.floor(Date.now() / 1000) + 3600;
  const body = b64url(JSON.stringify({ sub, exp, roles: ["reader"] }));
  const sig = crypto.createHmac("sha256", args.secret).update(`${header}.${body}`).digest();
  return `${header}.${body}.${b64url(sig)}`;
}

// -- protocol adapters: connect+join, send a room message, decode a received room message

function connectUrl(i) {
  if (proto === "mangu") return `${url}?token=${token(`${prefix}${i}`)}`;
  if (proto === "socketio") return `${url}/socket.io/?EIO=4&transport=websocket`;
  return url;
}

function open(i) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(connectUrl(i), { perMessageDeflate: false });
    let joined = false;
    const done = () => {
      if (!joined) {
        joined = true;
        resolve(ws);
      }
    };
    ws.once("error", reject);
    ws.on("message", (data) => {
      if (joined) return;
      const text = data.toString();
      if (proto === "mangu") {
        if (text.includes('"session:ready"')) ws.send(JSON.stringify({ event: "join:room", data: { room }, ref: "j" }));
        else if (text.includes('"ref":"j"')) done();
      } else if (proto === "socketio") {
        if (text[0] === "0") ws.send("40");
        else if (text.startsWith("40")) ws.send(`421${JSON.stringify(["join", room])}`);
        else if (text.startsWith("431")) done();
      }
    });
    if (proto === "bare") ws.once("open", done);
    if (proto === "socketio") {
      ws.on("message", (data) => {
        if (data.length === 1 && data.toString() === "2") ws.send("3"); // Engine.IO ping → pong
      });
    }
  });
}

function sendRoomMessage(ws, text, id) {
  if (proto === "mangu") {
    ws.send(JSON.stringify({ event: "message:send", data: { room, text, client_msg_id: id } }));
  } else if (proto === "socketio") {
    ws.send(`42${JSON.stringify(["send", { room, text }])}`);
  } else {
    ws.send(text);
  }
}

// The room-message text is "<id>|<sent ms>|<padding>"; decode returns it or null.
function decode(data) {
  const text = data.toString();
  if (proto === "mangu") {
    if (!text.startsWith('{"event":"message:received"')) return null;
    return JSON.parse(text).data.text;
  }
  if (proto === "socketio") {
    if (!text.startsWith('42["message"')) return null;
    return JSON.parse(text.slice(2))[1].text;
  }
  return text;
}

async function openAll() {
  const sockets = new Array(count);
  let next = 0;
  async function worker() {
    while (next < count) {
      const i = next++;
      for (let attempt = 0; ; attempt++) {
        try {
          sockets[i] = await open(i);
          break;
        } catch (err) {
          if (attempt >= 5) throw err;
          await new Promise((r) => setTimeout(r, 100 * (attempt + 1)));
        }
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  return sockets;
}

function percentile(sorted, q) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

function cpuMs() {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1000;
}

async function members() {
  const sockets = await openAll();
  const latencies = [];
  const seen = sockets.map(() => new Set());
  let duplicates = 0;
  let received = 0;
  let firstAt = null;
  let lastAt = null;
  const cpuStart = cpuMs();
  sockets.forEach((ws, i) => {
    ws.on("message", (data) => {
      const text = decode(data);
      if (text === null) return;
      const t = now();
      const [id, sent] = text.split("|", 2);
      if (seen[i].has(id)) duplicates++;
      else seen[i].add(id);
      received++;
      latencies.push(t - Number(sent));
      if (firstAt === null) firstAt = t;
      lastAt = t;
    });
  });
  console.log(JSON.stringify({ ready: sockets.length }));
  const stop = () => {
    latencies.sort((a, b) => a - b);
    const perMember = seen.map((s) => s.size);
    console.log(JSON.stringify({
      received, duplicates, connections: sockets.length,
      min_per_member: Math.min(...perMember), max_per_member: Math.max(...perMember),
      p50_ms: percentile(latencies, 0.5), p99_ms: percentile(latencies, 0.99), max_ms: latencies.at(-1) ?? null,
      first_at: firstAt, last_at: lastAt, cpu_ms: cpuMs() - cpuStart,
    }));
    for (const ws of sockets) ws.terminate();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.stdin.on("data", (d) => { if (d.toString().includes("stop")) stop(); });
}

async function publisher() {
  const [ws] = await openAll();
  const pad = "x".repeat(Math.max(0, size - 40));
  let waiting = null; // [id prefix, resolve]
  ws.on("message", (data) => {
    const text = decode(data);
    if (text !== null && waiting && text.startsWith(waiting[0])) waiting[1]();
  });
  const cpuStart = cpuMs();
  const started = now();
  for (let i = 0; i < messages; i++) {
    const id = `${prefix}m${i}`;
    const own = new Promise((resolve) => { waiting = [`${id}|`, resolve]; });
    sendRoomMessage(ws, `${id}|${now().toFixed(3)}|${pad}`, id);
    await own;
  }
  const elapsed = now() - started;
  console.log(JSON.stringify({ sent: messages, started_at: started, elapsed_ms: elapsed, cpu_ms: cpuMs() - cpuStart }));
  ws.terminate();
  process.exit(0);
}

async function idle() {
  const sockets = await openAll();
  console.log(JSON.stringify({ ready: sockets.length }));
  const stop = () => { for (const ws of sockets) ws.terminate(); process.exit(0); };
  process.on("SIGTERM", stop);
  process.stdin.on("data", (d) => { if (d.toString().includes("stop")) stop(); });
}

const roles = { members, publisher, idle };
if (!roles[role]) {
  console.error(`unknown --role ${role}`);
  process.exit(2);
}
roles[role]().catch((err) => {
  console.error(String(err && err.stack || err));
  process.exit(1);
});
