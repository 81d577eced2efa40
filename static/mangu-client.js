// mangu-client.js: a browser client for the MANGU realtime server, speaking the WebSocket
// protocol of docs/protocol.md. A dependency-free ES module; docs/client.md shows its use.
//
//   import { ManguClient } from "/static/mangu-client.js";
//   const client = new ManguClient({ token, refreshToken: async ({ reason, token }) => newToken });
//   client.on("message", (m) => show(m));          // every room message exactly once
//   client.connect();
//   await client.join("book:42");
//   await client.send("book:42", "Chapter 3 is wonderful");

/** Close codes after which the client reconnects by itself (with backoff). */
export const RECONNECT_CODES = new Set([1001, 1006, 1011, 1012, 1013, 1014]);
export const CLOSE_UNAUTHORIZED = 4001;
export const CLOSE_FORBIDDEN = 4003;

export const STATES = Object.freeze({
  IDLE: "idle",
  CONNECTING: "connecting",
  CONNECTED: "connected",
  RECONNECTING: "reconnecting",
  OFFLINE: "offline",
});

const HISTORY_PAGE = 100; // the server's largest history:fetch page
const MAX_AUTH_RETRIES = 3; // 4001 closes in a row, each after a new token, before giving up

/** An `error` reply of the server (`code`, `message`, `retryAfterMs`), or a client-side failure
 * (`disconnected`, `closed`, `forbidden`, `unauthorized`). */
export class ManguError extends Error {
  constructor(code, message, data = {}) {
    super(message || code);
    this.name = "ManguError";
    this.code = code;
    this.field = data.field;
    this.retryAfterMs = data.retry_after_ms;
  }
}

/** The `/ws` URL of the server that served this page. */
export function defaultUrl(location = globalThis.location) {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`;
}

/** Milliseconds to wait before reconnect attempt number `attempt` (0, 1, 2, ...): exponential
 * up to `max`, with "equal jitter" (half fixed, half random) so that the clients of a
 * restarted server do not all come back in the same instant. */
export function backoffDelay(attempt, { initial = 500, factor = 2, max = 10000 } = {}, random = Math.random) {
  const ceiling = Math.min(max, initial * factor ** attempt);
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

/** What one room (or direct conversation) has shown, by seq: tells a new message from a
 * repeat, and where a replay resumes.
 *
 * Messages of one room can arrive slightly out of order (two senders, two stores), so the
 * replay point is the highest seq below which nothing is missing (`cursor`), not the highest
 * seen. Everything from `oldest` to `cursor` has been shown; above the cursor `pending` holds
 * the seqs already shown. */
export class SeqTracker {
  constructor() {
    this.cursor = 0;
    this.oldest = null;
    this.highest = 0;
    this.pending = new Set();
    this.loaded = false; // the newest page was fetched once
    this.hasEarlier = false;
  }

  /** True when `seq` was not shown yet (and records it as shown). */
  add(seq) {
    if (this.has(seq)) return false;
    if (this.oldest === null || seq < this.oldest) this.oldest = seq;
    this.highest = Math.max(this.highest, seq);
    this.pending.add(seq);
    this._advance();
    return true;
  }

  has(seq) {
    if (this.pending.has(seq)) return true;
    return this.oldest !== null && seq >= this.oldest && seq <= this.cursor;
  }

  /** Everything up to the highest seq seen is accounted for: a history answer without
   * `has_more` was just read, and from the join on the server delivers every new message. */
  caughtUp() {
    this.skipTo(this.highest);
  }

  /** Everything up to `seq` is accounted for (a history page ended there). */
  skipTo(seq) {
    this.cursor = Math.max(this.cursor, seq);
    this._advance();
  }

  _advance() {
    while (this.pending.has(this.cursor + 1)) this.cursor += 1;
    for (const seq of this.pending) if (seq <= this.cursor) this.pending.delete(seq);
  }
}

let idCounter = 0;

/** A fresh `client_msg_id`: unique per sender, kept across retries of one message. */
export function newClientMsgId() {
  idCounter += 1;
  const random = Math.random().toString(36).slice(2, 10);
  return `c-${Date.now().toString(36)}-${random}-${idCounter}`;
}

export class ManguClient {
  /**
   * @param {object} options
   * @param {string} options.token a JWT for the user
   * @param {function} [options.refreshToken] `async ({reason, token}) => newToken | null`;
   *   asked before the token expires (`reason: "expiring"`, on `auth:expiring`) and after the
   *   server closed with 4001 (`reason: "unauthorized"`). Without it, or when it gives
   *   nothing, a 4001 leaves the client offline.
   * @param {string} [options.url] the `/ws` URL (default: the page's own server)
   * @param {object} [options.reconnect] `{initial, factor, max}` milliseconds of backoff
   * @param {number} [options.typingInterval] ms between two `typing:start` frames for a room
   * @param {number} [options.typingIdle] ms without typing after which `typing:stop` is sent
   * @param {number} [options.historyLimit] messages fetched when a room is first shown
   * @param {number} [options.pingInterval] ms between `ping` round trips while connected
   * @param {number} [options.pingTimeout] ms without a reply after which the connection counts as lost
   */
  constructor({
    token,
    refreshToken = null,
    url = null,
    reconnect = {},
    typingInterval = 2000,
    typingIdle = 3000,
    historyLimit = 50,
    pingInterval = 25000,
    pingTimeout = 10000,
    WebSocket: Socket = globalThis.WebSocket,
  } = {}) {
    this.token = token;
    this.refreshToken = refreshToken;
    this.url = url || defaultUrl();
    this.reconnectOptions = reconnect;
    this.typingInterval = typingInterval;
    this.typingIdle = typingIdle;
    this.historyLimit = historyLimit;
    this.pingInterval = pingInterval;
    this.pingTimeout = pingTimeout;
    this.Socket = Socket;

    this.state = STATES.IDLE;
    this.user = null;
    this.session = null;
    this.expiresAt = null;

    this._ws = null;
    this._ready = false;
    this._stopped = false;
    this._stopError = null; // why the client stopped: later sends are refused with it
    this._attempt = 0;
    this._authRetries = 0;
    this._reconnectTimer = null;
    this._pingTimer = null;
    this._refs = 0;
    this._pending = new Map(); // ref -> {resolve, reject}
    this._outbox = new Map(); // client_msg_id -> {event, data, resolve, reject, sent}
    this._rooms = new Map(); // room -> SeqTracker (the rooms this client wants to be in)
    this._joinWaiters = new Map(); // room -> [{resolve, reject}] until the room is joined
    this._conversations = new Map(); // user -> SeqTracker
    this._typing = new Map(); // room -> {lastSent, idleTimer}
    this._presence = "online";
    this._listeners = new Map();
    this._refreshing = null;
    this._onOnline = () => this._reconnectNow();
  }

  // -- events

  /** Call `listener(data)` on `event`; returns a function that unsubscribes. Events:
   * `state`, `ready`, `members`, `message`, `direct`, `token`, `error`, and the server's
   * own (`room:joined`, `room:left`, `typing:start`, `typing:stop`, `presence:updated`,
   * `auth:expiring`, `system:shutdown`, any `system:*`, and `system` for all of those). */
  on(event, listener) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(listener);
    return () => this.off(event, listener);
  }

  off(event, listener) {
    this._listeners.get(event)?.delete(listener);
  }

  _emit(event, data) {
    for (const listener of [...(this._listeners.get(event) || [])]) {
      try {
        listener(data);
      } catch (err) {
        console.error(`mangu-client: a "${event}" listener failed`, err);
      }
    }
  }

  _setState(state, detail = {}) {
    this.state = state;
    this._emit("state", { state, ...detail });
  }

  // -- connection

  /** Open the connection (and keep it open until `close()`). */
  connect() {
    if (this._ws || this._reconnectTimer) return;
    this._stopped = false;
    this._stopError = null;
    this._attempt = 0;
    globalThis.addEventListener?.("online", this._onOnline);
    this._open();
  }

  /** Close for good: no reconnect; pending sends and requests are rejected with `closed`. */
  close() {
    this._stopped = true;
    globalThis.removeEventListener?.("online", this._onOnline);
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    const ws = this._ws;
    this._detach();
    if (ws && ws.readyState <= 1) ws.close(1000, "client closed");
    this._stopError = new ManguError("closed", "the client was closed");
    this._failAll(this._stopError);
    this._setState(STATES.OFFLINE, { reason: "closed" });
  }

  get connected() {
    return this._ready;
  }

  _open() {
    this._reconnectTimer = null;
    this._setState(this._attempt === 0 ? STATES.CONNECTING : STATES.RECONNECTING, { attempt: this._attempt });
    const separator = this.url.includes("?") ? "&" : "?";
    let ws;
    try {
      ws = new this.Socket(`${this.url}${separator}token=${encodeURIComponent(this.token || "")}`);
    } catch (err) {
      this._emit("error", err);
      this._scheduleReconnect({ code: 1006 });
      return;
    }
    this._ws = ws;
    ws.onmessage = (event) => {
      if (ws === this._ws) this._onFrame(event.data);
    };
    ws.onclose = (event) => {
      if (ws !== this._ws) return;
      this._detach();
      this._onClose(event.code, event.reason);
    };
    ws.onerror = () => {}; // a close event follows, with the code
  }

  /** Forget the current socket: reject what waits on it, keep the unsent messages. */
  _detach() {
    const ws = this._ws;
    this._ws = null;
    this._ready = false;
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    for (const state of this._typing.values()) clearTimeout(state.idleTimer);
    this._typing.clear();
    if (ws) ws.onmessage = ws.onclose = ws.onerror = null;
    const pending = [...this._pending.values()];
    this._pending.clear();
    for (const item of this._outbox.values()) item.sent = false;
    const lost = new ManguError("disconnected", "the connection was lost");
    for (const request of pending) if (!request.outbox) request.reject(lost);
  }

  _onClose(code, reason) {
    if (this._stopped) return;
    if (code === CLOSE_FORBIDDEN) {
      const message = reason || "disconnected by the server";
      this._stop(new ManguError("forbidden", message), { code, reason: "forbidden", message });
    } else if (code === CLOSE_UNAUTHORIZED) {
      this._reauthenticate(reason);
    } else if (RECONNECT_CODES.has(code)) {
      this._scheduleReconnect({ code });
    } else {
      const message = reason || `closed with ${code}`;
      this._stop(new ManguError("closed", message), { code, reason: "ended", message });
    }
  }

  _stop(error, detail) {
    this._stopped = true;
    this._stopError = error;
    globalThis.removeEventListener?.("online", this._onOnline);
    this._failAll(error);
    this._setState(STATES.OFFLINE, detail);
  }

  _failAll(error) {
    const outbox = [...this._outbox.values()];
    this._outbox.clear();
    for (const item of outbox) item.reject(error);
    const waiters = [...this._joinWaiters.values()].flat();
    this._joinWaiters.clear();
    for (const waiter of waiters) waiter.reject(error);
  }

  async _reauthenticate(reason) {
    this._authRetries += 1;
    let token = null;
    if (this.refreshToken && this._authRetries <= MAX_AUTH_RETRIES) {
      try {
        token = await this.refreshToken({ reason: "unauthorized", token: this.token });
      } catch (err) {
        this._emit("error", err);
      }
    }
    if (this._stopped) return;
    if (!token) {
      const message = reason || "the token was refused";
      this._stop(new ManguError("unauthorized", message), { code: CLOSE_UNAUTHORIZED, reason: "unauthorized", message });
      return;
    }
    this.token = token;
    this._scheduleReconnect({ code: CLOSE_UNAUTHORIZED });
  }

  _scheduleReconnect(detail) {
    const delay = backoffDelay(this._attempt, this.reconnectOptions);
    this._attempt += 1;
    this._setState(STATES.RECONNECTING, { ...detail, attempt: this._attempt, retryIn: delay });
    this._reconnectTimer = setTimeout(() => this._open(), delay);
  }

  _reconnectNow() {
    // the browser is back online: do not sit out the rest of a long backoff
    if (this._reconnectTimer && !this._stopped) {
      clearTimeout(this._reconnectTimer);
      this._open();
    }
  }

  // -- frames from the server

  _onFrame(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    const { event, data = {}, ref } = frame;
    if ((event === "ack" || event === "error") && ref !== undefined) {
      const request = this._pending.get(ref);
      if (!request) return;
      this._pending.delete(ref);
      if (event === "ack") request.resolve(data);
      else request.reject(new ManguError(data.code, data.message, data));
      return;
    }
    switch (event) {
      case "session:ready":
        this._onReady(data);
        return;
      case "message:received":
        this._acceptRoomMessage(data);
        return;
      case "message:direct":
        this._acceptDirect(data);
        return;
      case "auth:expiring":
        this._emit(event, data);
        this.refreshSession().catch((err) => this._emit("error", err));
        return;
      case "error":
        this._emit("error", new ManguError(data.code, data.message, data));
        return;
      default:
        this._emit(event, data);
        if (event.startsWith("system:")) this._emit("system", { event, data });
    }
  }

  _onReady(data) {
    this.session = data;
    this.user = data.user;
    this.expiresAt = data.expires_at;
    this._ready = true;
    this._attempt = 0;
    this._authRetries = 0;
    this._setState(STATES.CONNECTED, { user: data.user });
    this._emit("ready", data);
    this._startPings();
    this._resume().catch((err) => this._emit("error", err));
  }

  /** After (re)connecting: the presence chosen, the rooms re-joined with what was missed
   * replayed, the direct conversations caught up, then the unsent messages sent again. */
  async _resume() {
    const ws = this._ws;
    if (this._presence !== "online") {
      this._request("presence:update", { status: this._presence }).catch((err) => this._emit("error", err));
    }
    await Promise.allSettled([...this._rooms.keys()].map((room) => this._joinRoom(room)));
    await Promise.allSettled(
      [...this._conversations.entries()]
        .filter(([, tracker]) => tracker.loaded || tracker.highest > 0)
        .map(([user, tracker]) => this._catchUp({ with: user }, tracker, "direct")),
    );
    if (ws !== this._ws || !this._ready) return;
    for (const [id, item] of this._outbox) if (!item.sent) this._transmit(id, item);
  }

  _startPings() {
    clearInterval(this._pingTimer);
    if (!this.pingInterval) return;
    this._pingTimer = setInterval(() => {
      const ws = this._ws;
      const timer = setTimeout(() => {
        if (ws !== this._ws) return;
        // No answer: the network dropped the connection without a close. Count it as lost.
        this._detach();
        ws.close(4000, "no answer to ping");
        this._onClose(1006, "no answer to ping");
      }, this.pingTimeout);
      this._request("ping", {}).then(
        () => clearTimeout(timer),
        () => clearTimeout(timer),
      );
    }, this.pingInterval);
  }

  // -- requests

  _send(frame) {
    this._ws.send(JSON.stringify(frame));
  }

  /** Send `event` with a fresh ref; resolves with the ack's data, rejects with the error. */
  _request(event, data) {
    if (!this._ready) return Promise.reject(new ManguError("disconnected", "not connected"));
    return new Promise((resolve, reject) => {
      const ref = `r${++this._refs}`;
      this._pending.set(ref, { resolve, reject });
      this._send({ event, data, ref });
    });
  }

  /** Send one round trip `ping`; resolves with the server's `{server_time}`. */
  ping() {
    return this._request("ping", {});
  }

  // -- rooms

  /** Join `room` (now, or as soon as connected) and show its newest messages; after every
   * reconnect it is joined again and what was missed is replayed. Resolves with
   * `{room, members, hasEarlier}`. */
  join(room) {
    if (!this._rooms.has(room)) this._rooms.set(room, new SeqTracker());
    const joined = new Promise((resolve, reject) => {
      if (!this._joinWaiters.has(room)) this._joinWaiters.set(room, []);
      this._joinWaiters.get(room).push({ resolve, reject });
    });
    if (this._ready) this._joinRoom(room);
    return joined;
  }

  /** Send `join:room` and catch up; settles the `join()` promises waiting for `room` (a lost
   * connection leaves them waiting for the next one). */
  async _joinRoom(room) {
    const waiters = this._joinWaiters.get(room) || [];
    this._joinWaiters.delete(room);
    try {
      const ack = await this._request("join:room", { room });
      this._emit("members", { room, members: ack.members });
      const tracker = this._rooms.get(room);
      if (tracker) await this._catchUp({ room }, tracker, "message");
      const result = { room, members: ack.members, hasEarlier: tracker ? tracker.hasEarlier : false };
      for (const waiter of waiters) waiter.resolve(result);
    } catch (err) {
      if (err.code === "disconnected") {
        this._joinWaiters.set(room, [...waiters, ...(this._joinWaiters.get(room) || [])]);
        return;
      }
      this._rooms.delete(room); // refused: not joined again after a reconnect
      for (const waiter of waiters) waiter.reject(err);
      if (!waiters.length) this._emit("error", err);
    }
  }

  /** The first time: the newest page. After a reconnect: every message after the cursor,
   * page by page while `has_more`. Each new message is emitted once, in seq order. */
  async _catchUp(key, tracker, event) {
    if (!tracker.loaded) {
      const answer = await this._request("history:fetch", { ...key, limit: this.historyLimit });
      this._emitNew(answer.messages, tracker, event);
      tracker.loaded = true;
      tracker.hasEarlier = answer.has_more;
      tracker.caughtUp();
      return;
    }
    for (;;) {
      const answer = await this._request("history:fetch", { ...key, after: tracker.cursor, limit: HISTORY_PAGE });
      this._emitNew(answer.messages, tracker, event);
      if (!answer.has_more || answer.messages.length === 0) break;
      tracker.skipTo(answer.messages[answer.messages.length - 1].seq);
    }
    tracker.caughtUp();
  }

  _emitNew(messages, tracker, event) {
    for (const message of messages) if (tracker.add(message.seq)) this._emit(event, { ...message, replayed: true });
  }

  /** Leave `room`; it is no longer joined after a reconnect. */
  leave(room) {
    this._rooms.delete(room);
    this.stopTyping(room);
    for (const waiter of this._joinWaiters.get(room) || []) waiter.reject(new ManguError("left", `left ${room}`));
    this._joinWaiters.delete(room);
    for (const [id, item] of this._outbox) {
      if (!item.sent && item.event === "message:send" && item.data.room === room) {
        this._outbox.delete(id);
        item.reject(new ManguError("not_member", `left ${room} before the message was sent`));
      }
    }
    if (!this._ready) return Promise.resolve({ room });
    return this._request("leave:room", { room });
  }

  /** The page of messages before the oldest shown (scroll-back); each is emitted as a
   * `message` event. Resolves with `{count, hasEarlier}`. */
  loadEarlier(room) {
    return this._loadEarlier({ room }, this._rooms.get(room), "message");
  }

  /** Scroll-back in the direct conversation with `user`. */
  loadEarlierDirect(user) {
    return this._loadEarlier({ with: user }, this._conversation(user), "direct");
  }

  async _loadEarlier(key, tracker, event) {
    if (!tracker || tracker.oldest === null || tracker.oldest <= 1) return { count: 0, hasEarlier: false };
    const answer = await this._request("history:fetch", { ...key, before: tracker.oldest, limit: this.historyLimit });
    let count = 0;
    for (const message of [...answer.messages].reverse()) {
      if (tracker.add(message.seq)) {
        count += 1;
        this._emit(event, { ...message, replayed: true, earlier: true });
      }
    }
    tracker.hasEarlier = answer.has_more;
    return { count, hasEarlier: answer.has_more };
  }

  _acceptRoomMessage(message) {
    const tracker = this._rooms.get(message.room);
    if (tracker && tracker.add(message.seq)) this._emit("message", message);
  }

  // -- messages

  /** Send `text` to `room`. Resolves with the ack `{id, seq, ts, room}`, rejects with the
   * server's error. Sent again with the same client_msg_id after a reconnect until
   * acknowledged (the server stores and delivers it once). */
  send(room, text, { clientMsgId = newClientMsgId() } = {}) {
    this.stopTyping(room);
    return this._enqueue("message:send", { room, text, client_msg_id: clientMsgId }, (ack) => {
      // Normally message:received came first; after a retry whose first ack was lost the
      // server does not deliver it again, and the ack is all there is.
      this._acceptRoomMessage({ ...ack, sender: this.user, text, client_msg_id: clientMsgId });
    });
  }

  /** Send a direct message to the user `to`; resolves with `{id, seq, ts, conversation}`. */
  direct(to, text, { clientMsgId = newClientMsgId() } = {}) {
    this._conversation(to);
    return this._enqueue("message:direct", { to, text, client_msg_id: clientMsgId }, (ack) => {
      // The sending connection gets no message:direct for its own message: the ack stands in.
      this._acceptDirect({ ...ack, sender: this.user, to, text, client_msg_id: clientMsgId });
    });
  }

  /** The messages waiting for an ack: `[{event, data}]`, oldest first. */
  get unsent() {
    return [...this._outbox.values()].map(({ event, data }) => ({ event, data }));
  }

  _enqueue(event, data, onAck) {
    if (this._stopError) return Promise.reject(this._stopError);
    return new Promise((resolve, reject) => {
      const id = data.client_msg_id;
      const acked = (ack) => {
        onAck(ack);
        resolve(ack);
      };
      const item = { event, data, resolve: acked, reject, sent: false };
      this._outbox.set(id, item);
      // Frames are served in order: a send after join() (even one not acked yet) finds the room joined.
      if (this._ready) this._transmit(id, item);
    });
  }

  _transmit(id, item) {
    const ref = `r${++this._refs}`;
    item.sent = true;
    this._pending.set(ref, {
      outbox: true,
      resolve: (ack) => {
        this._outbox.delete(id);
        item.resolve(ack);
      },
      reject: (err) => {
        this._outbox.delete(id);
        item.reject(err);
      },
    });
    this._send({ event: item.event, data: item.data, ref });
  }

  // -- direct conversations

  _conversation(user) {
    if (!this._conversations.has(user)) this._conversations.set(user, new SeqTracker());
    return this._conversations.get(user);
  }

  /** Show the direct conversation with `user`: its newest messages (once), then replayed
   * after each reconnect. Resolves with `{hasEarlier}`. */
  async openConversation(user) {
    const tracker = this._conversation(user);
    if (!tracker.loaded) await this._catchUp({ with: user }, tracker, "direct");
    return { hasEarlier: tracker.hasEarlier };
  }

  _acceptDirect(message) {
    const peer = message.sender === this.user ? message.to : message.sender;
    if (this._conversation(peer).add(message.seq)) this._emit("direct", message);
  }

  // -- typing and presence

  /** Call on every keystroke in `room`'s composer: `typing:start` goes out at most once per
   * `typingInterval`, and `typing:stop` after `typingIdle` ms without a call. */
  typing(room) {
    if (!this._ready || !this._rooms.has(room)) return;
    const now = Date.now();
    let state = this._typing.get(room);
    if (!state) {
      state = { lastSent: 0, idleTimer: null };
      this._typing.set(room, state);
    }
    if (now - state.lastSent >= this.typingInterval) {
      state.lastSent = now;
      this._send({ event: "typing:start", data: { room } });
    }
    clearTimeout(state.idleTimer);
    state.idleTimer = setTimeout(() => this.stopTyping(room), this.typingIdle);
  }

  /** Tell the room this user stopped typing (when a typing:start is outstanding). */
  stopTyping(room) {
    const state = this._typing.get(room);
    if (!state) return;
    clearTimeout(state.idleTimer);
    this._typing.delete(room);
    if (this._ready) this._send({ event: "typing:stop", data: { room } });
  }

  /** Set this user's status (`online`, `away`, `busy`); kept across reconnects. Resolves
   * with `{user, status, last_seen}` once the server has it. */
  setPresence(status) {
    this._presence = status;
    if (!this._ready) return Promise.resolve({ user: this.user, status, last_seen: null });
    return this._request("presence:update", { status });
  }

  // -- tokens

  /** Ask `refreshToken` for a new token and hand it to the server (`auth:refresh`); the
   * server does this prompt with `auth:expiring`. Resolves with the new expiry (epoch s). */
  refreshSession() {
    if (!this.refreshToken) return Promise.resolve(null);
    if (!this._refreshing) {
      this._refreshing = (async () => {
        const token = await this.refreshToken({ reason: "expiring", token: this.token });
        if (!token) return null;
        this.token = token; // used by the next reconnect even if this connection drops
        const ack = await this._request("auth:refresh", { token });
        this.expiresAt = ack.expires_at;
        this._emit("token", { expiresAt: ack.expires_at });
        return ack.expires_at;
      })().finally(() => {
        this._refreshing = null;
      });
    }
    return this._refreshing;
  }
}
