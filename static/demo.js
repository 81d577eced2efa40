// The demo page: log in or sign up, join book rooms, chat, see who is here and who is typing,
// and send direct messages, over mangu-client.js. Plain DOM, no framework.

import { ManguClient, newClientMsgId } from "/static/mangu-client.js";

const $ = (id) => document.getElementById(id);
const SESSION_KEY = "mangu.session"; // {token, user, expiresAt}: per tab (sessionStorage)
const ROOMS_KEY = "mangu.rooms";
const ROOM_NAME = /^[A-Za-z0-9:_.-]{1,64}$/;
const TYPING_SHOWN_MS = 8000; // a typing:stop lost with a connection must not leave it shown

let session = null;
let client = null;
let views = new Map(); // "room:<name>" | "dm:<user>" -> View
let current = null;

// -- session

function readSession() {
  try {
    const stored = JSON.parse(sessionStorage.getItem(SESSION_KEY));
    if (stored && stored.token && (!stored.expiresAt || stored.expiresAt > Date.now() / 1000)) return stored;
  } catch {
    // unreadable: log in again
  }
  return null;
}

function saveSession(value) {
  session = value;
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(value));
}

function clearSession() {
  session = null;
  sessionStorage.removeItem(SESSION_KEY);
  sessionStorage.removeItem(ROOMS_KEY);
}

/** A session from a token handed over in the address (`/#token=<JWT>`, never sent to the
 * server in the URL): the user and expiry are read from its claims, the server checks it. */
function sessionFromToken(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
    return { token, user: claims.sub, expiresAt: claims.exp };
  } catch {
    return null;
  }
}

// -- REST: login, sign-up, token refresh

async function postJson(path, body, headers = {}) {
  let response;
  try {
    response = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json", ...headers },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    return { ok: false, status: 0, body: null };
  }
  let parsed = null;
  try {
    parsed = await response.json();
  } catch {
    // not JSON: described by the status
  }
  return { ok: response.ok, status: response.status, body: parsed, headers: response.headers };
}

function describeFailure(action, { status, body, headers }) {
  if (status === 0) return "Cannot reach the server. Check your connection and try again.";
  if (status === 404) {
    return action === "register" ? "Sign-up is not open on this server." : "Logging in is not available on this server.";
  }
  if (status === 429) {
    const retry = headers?.get("Retry-After");
    return `Too many attempts. Try again${retry ? ` in ${retry} s` : " later"}.`;
  }
  return body?.error?.message || `The server answered ${status}.`;
}

async function refreshToken({ token }) {
  const answer = await postJson("/api/auth/refresh", undefined, { Authorization: `Bearer ${token}` });
  if (!answer.ok || !answer.body?.token) return null;
  saveSession({ ...session, token: answer.body.token, expiresAt: answer.body.expires_at });
  return answer.body.token;
}

// -- screens

function showLogin(message = "") {
  $("chat").hidden = true;
  $("me").hidden = true;
  $("login").hidden = false;
  showLoginError(message);
  setBadge("offline");
  $("username").focus();
}

function showLoginError(message) {
  $("login-error").textContent = message;
  $("login-error").hidden = !message;
}

function notice(message, { sticky = false } = {}) {
  const box = $("notice");
  box.textContent = message;
  box.hidden = !message;
  clearTimeout(notice.timer);
  if (message && !sticky) notice.timer = setTimeout(() => (box.hidden = true), 6000);
}

const BADGE_TEXT = { connected: "connected", connecting: "connecting…", reconnecting: "reconnecting…", offline: "offline", idle: "offline" };

function setBadge(state, detail = {}) {
  const badge = $("badge");
  badge.dataset.state = state;
  badge.textContent = BADGE_TEXT[state] || state;
  badge.title = state === "reconnecting" && detail.retryIn ? `next attempt in ${(detail.retryIn / 1000).toFixed(1)} s` : state;
}

// -- views: one per room and per direct conversation, each with its own message list

class View {
  constructor(kind, name) {
    this.kind = kind;
    this.name = name;
    this.key = `${kind}:${name}`;
    this.list = document.createElement("ol");
    this.list.className = "message-list";
    this.byId = new Map();
    this.members = new Map(); // rooms: user -> {user, status, last_seen}
    this.typing = new Map(); // user -> timer
    this.unread = 0;
    this.hasEarlier = false;
    this.loading = false;
  }

  get title() {
    return this.kind === "room" ? this.name : `@${this.name}`;
  }
}

function viewFor(kind, name) {
  const key = `${kind}:${name}`;
  if (!views.has(key)) {
    views.set(key, new View(kind, name));
    renderLists();
  }
  return views.get(key);
}

function show(view) {
  current = view;
  view.unread = 0;
  const box = $("messages");
  for (const list of box.querySelectorAll(".message-list")) list.remove();
  box.append(view.list);
  $("empty").hidden = true;
  $("view-title").textContent = view.title;
  $("leave").hidden = view.kind !== "room";
  $("text").disabled = $("send").disabled = false;
  $("text").placeholder = view.kind === "room" ? `Write to ${view.name}…` : `Write to ${view.name} privately…`;
  renderLists();
  renderTyping();
  renderLoadEarlier();
  box.scrollTop = box.scrollHeight;
}

function showEmpty() {
  current = null;
  for (const list of $("messages").querySelectorAll(".message-list")) list.remove();
  $("empty").hidden = false;
  $("view-title").textContent = "Pick a room";
  $("leave").hidden = true;
  $("load-earlier").hidden = true;
  $("text").disabled = $("send").disabled = true;
  renderLists();
  renderTyping();
}

// -- messages

function timeOf(ts) {
  const date = new Date(ts);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function messageElement({ id, seq, sender, text, ts, client_msg_id: clientMsgId }, { pending = false } = {}) {
  const item = document.createElement("li");
  item.className = "msg";
  if (sender === session.user) item.classList.add("mine");
  if (pending) item.classList.add("pending");
  if (id) item.dataset.id = id;
  if (seq !== undefined) item.dataset.seq = seq;
  if (clientMsgId) item.dataset.clientMsgId = clientMsgId;
  item.dataset.sender = sender;
  const head = document.createElement("div");
  head.className = "meta";
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = sender;
  const when = document.createElement("time");
  if (ts) when.dateTime = ts;
  when.textContent = pending ? "sending…" : timeOf(ts);
  head.append(who, when);
  const body = document.createElement("p");
  body.className = "text";
  body.textContent = text;
  item.append(head, body);
  return item;
}

function nearBottom(box) {
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}

/** Put a stored message in its view, in seq order, replacing this tab's pending copy. */
function showMessage(view, message) {
  if (view.byId.has(message.id)) {
    console.warn("mangu demo: duplicate message", message.id); // the client shows each once
    return;
  }
  const box = $("messages");
  const follow = view === current && !message.earlier && nearBottom(box);
  if (message.client_msg_id) view.list.querySelector(`.pending[data-client-msg-id="${CSS.escape(message.client_msg_id)}"]`)?.remove();
  const item = messageElement(message);
  let before = null;
  for (let node = view.list.lastElementChild; node; node = node.previousElementSibling) {
    if (node.classList.contains("pending") || Number(node.dataset.seq) > message.seq) before = node;
    else break;
  }
  view.list.insertBefore(item, before);
  view.byId.set(message.id, item);
  stopShowingTyping(view, message.sender);
  if (view !== current && !message.replayed && message.sender !== session.user) {
    view.unread += 1;
    renderLists();
  }
  if (follow) box.scrollTop = box.scrollHeight;
}

function sendFromComposer(event) {
  event.preventDefault();
  const input = $("text");
  const text = input.value.trim();
  if (!text || !current) return;
  input.value = "";
  const view = current;
  const clientMsgId = newClientMsgId();
  const pending = messageElement({ sender: session.user, text, client_msg_id: clientMsgId }, { pending: true });
  view.list.append(pending);
  $("messages").scrollTop = $("messages").scrollHeight;
  const sent = view.kind === "room" ? client.send(view.name, text, { clientMsgId }) : client.direct(view.name, text, { clientMsgId });
  sent.catch((err) => {
    pending.classList.add("failed");
    pending.querySelector("time").textContent = `not sent: ${err.message}`;
  });
}

async function loadEarlier() {
  const view = current;
  if (!view || !view.hasEarlier || view.loading) return;
  view.loading = true;
  const box = $("messages");
  const before = box.scrollHeight;
  try {
    const result = view.kind === "room" ? await client.loadEarlier(view.name) : await client.loadEarlierDirect(view.name);
    view.hasEarlier = result.hasEarlier;
    box.scrollTop += box.scrollHeight - before; // keep the same messages in sight
  } catch (err) {
    notice(`Could not load earlier messages: ${err.message}`);
  } finally {
    view.loading = false;
    renderLoadEarlier();
  }
}

function renderLoadEarlier() {
  $("load-earlier").hidden = !(current && current.hasEarlier);
}

// -- typing

function startShowingTyping(view, user) {
  clearTimeout(view.typing.get(user));
  view.typing.set(user, setTimeout(() => stopShowingTyping(view, user), TYPING_SHOWN_MS));
  if (view === current) renderTyping();
}

function stopShowingTyping(view, user) {
  if (!view.typing.has(user)) return;
  clearTimeout(view.typing.get(user));
  view.typing.delete(user);
  if (view === current) renderTyping();
}

function renderTyping() {
  const users = current ? [...current.typing.keys()] : [];
  let text = "";
  if (users.length === 1) text = `${users[0]} is typing…`;
  else if (users.length === 2) text = `${users[0]} and ${users[1]} are typing…`;
  else if (users.length > 2) text = "Several people are typing…";
  $("typing").textContent = text;
}

// -- lists: rooms, members, conversations

function chip(label, { active = false, unread = 0, status = null, onClick }) {
  const item = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "chip";
  if (active) button.setAttribute("aria-current", "true");
  if (status) {
    const dot = document.createElement("span");
    dot.className = "dot";
    dot.dataset.status = status;
    button.append(dot);
  }
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = label;
  button.append(name);
  if (unread) {
    const count = document.createElement("span");
    count.className = "unread";
    count.textContent = unread;
    button.append(count);
  }
  button.addEventListener("click", onClick);
  item.append(button);
  return item;
}

function renderLists() {
  const rooms = [...views.values()].filter((v) => v.kind === "room");
  const conversations = [...views.values()].filter((v) => v.kind === "dm");
  $("rooms").replaceChildren(
    ...rooms.map((v) => chip(v.name, { active: v === current, unread: v.unread, onClick: () => show(v) })),
  );
  $("conversations").replaceChildren(
    ...conversations.map((v) => chip(v.name, { active: v === current, unread: v.unread, onClick: () => openDirect(v.name) })),
  );
  renderMembers();
}

function renderMembers() {
  const room = current && current.kind === "room" ? current : null;
  const members = room ? [...room.members.values()].sort((a, b) => a.user.localeCompare(b.user)) : [];
  $("member-count").textContent = room ? `(${members.length})` : "";
  $("members").replaceChildren(
    ...members.map((m) => {
      const mine = m.user === session.user;
      const item = chip(mine ? `${m.user} (you)` : m.user, {
        status: m.status,
        onClick: () => (mine ? null : openDirect(m.user)),
      });
      item.dataset.user = m.user;
      item.dataset.status = m.status;
      const status = document.createElement("span");
      status.className = "status";
      status.textContent = m.status;
      item.firstChild.append(status);
      item.firstChild.title = mine ? "you" : `${m.status}: send ${m.user} a direct message`;
      return item;
    }),
  );
}

function setPresence(entry) {
  for (const view of views.values()) {
    if (view.kind === "room" && view.members.has(entry.user)) view.members.set(entry.user, { ...view.members.get(entry.user), ...entry });
  }
  if (entry.user === session.user && entry.status !== "offline") {
    $("my-dot").dataset.status = entry.status;
    $("my-status").value = entry.status;
  }
  renderMembers();
}

// -- rooms and conversations

function saveRooms() {
  const rooms = [...views.values()].filter((v) => v.kind === "room").map((v) => v.name);
  sessionStorage.setItem(ROOMS_KEY, JSON.stringify(rooms));
}

function joinRoom(name) {
  if (!ROOM_NAME.test(name)) {
    notice("A room name has 1 to 64 letters, digits and : _ . - (for example book:42).");
    return;
  }
  const known = views.has(`room:${name}`);
  const view = viewFor("room", name);
  show(view);
  saveRooms();
  if (known) return;
  client.join(name).then(
    (result) => {
      view.hasEarlier = result.hasEarlier;
      if (view === current) renderLoadEarlier();
    },
    (err) => {
      views.delete(view.key);
      saveRooms();
      if (current === view) showEmpty();
      else renderLists();
      if (err.code !== "left") notice(`Could not join ${name}: ${err.message}`);
    },
  );
}

function leaveRoom(view) {
  client.leave(view.name).catch(() => {});
  views.delete(view.key);
  saveRooms();
  const next = [...views.values()][0];
  if (next) show(next);
  else showEmpty();
}

function openDirect(user) {
  if (!user || user === session.user) return;
  const view = viewFor("dm", user);
  show(view);
  client.openConversation(user).then(
    (result) => {
      view.hasEarlier = result.hasEarlier;
      if (view === current) renderLoadEarlier();
    },
    (err) => notice(`Could not open the conversation with ${user}: ${err.message}`),
  );
}

// -- the connection

function startChat() {
  $("login").hidden = true;
  $("chat").hidden = false;
  $("me").hidden = false;
  $("my-name").textContent = session.user;
  views = new Map();
  showEmpty();

  client = new ManguClient({ token: session.token, refreshToken });
  client.on("state", (detail) => {
    setBadge(detail.state, detail);
    if (detail.state === "connected") notice("");
    if (detail.state !== "offline") return;
    if (detail.reason === "unauthorized") {
      clearSession();
      showLogin("Your session has ended. Please log in again.");
    } else if (detail.reason === "forbidden") {
      notice("You were disconnected by the server.", { sticky: true });
    } else if (detail.reason === "ended") {
      notice(`Disconnected: ${detail.message}. Reload the page to connect again.`, { sticky: true });
    }
  });
  client.on("ready", (data) => {
    session.user = data.user;
    $("my-name").textContent = data.user;
  });
  client.on("members", ({ room, members }) => {
    const view = views.get(`room:${room}`);
    if (!view) return;
    view.members = new Map(members.map((m) => [m.user, m]));
    if (view === current) renderMembers();
  });
  client.on("room:joined", (entry) => {
    const view = views.get(`room:${entry.room}`);
    if (!view) return;
    view.members.set(entry.user, { user: entry.user, status: entry.status, last_seen: entry.last_seen });
    if (view === current) renderMembers();
  });
  client.on("room:left", ({ room, user }) => {
    const view = views.get(`room:${room}`);
    if (!view) return;
    view.members.delete(user);
    stopShowingTyping(view, user);
    if (view === current) renderMembers();
  });
  client.on("presence:updated", setPresence);
  client.on("typing:start", ({ room, user }) => {
    const view = views.get(`room:${room}`);
    if (view) startShowingTyping(view, user);
  });
  client.on("typing:stop", ({ room, user }) => {
    const view = views.get(`room:${room}`);
    if (view) stopShowingTyping(view, user);
  });
  client.on("message", (message) => {
    const view = views.get(`room:${message.room}`);
    if (view) showMessage(view, message);
  });
  client.on("direct", (message) => {
    const peer = message.sender === session.user ? message.to : message.sender;
    showMessage(viewFor("dm", peer), message);
  });
  client.on("system:shutdown", () => notice("The server is restarting; reconnecting…", { sticky: true }));
  client.on("system", ({ event, data }) => {
    if (event !== "system:shutdown") notice(data.message || event.replace("system:", "Server notice: "));
  });
  client.on("error", (err) => {
    if (err.code === "rate_limited") notice("Slow down a little: too many messages at once.");
    else if (err.code && err.code !== "disconnected") console.warn("mangu demo:", err.code, err.message);
  });
  client.connect();

  const wanted = JSON.parse(sessionStorage.getItem(ROOMS_KEY) || "[]");
  const fromAddress = new URLSearchParams(location.search).get("room");
  if (fromAddress && !wanted.includes(fromAddress)) wanted.push(fromAddress);
  for (const room of wanted) joinRoom(room);
}

function logOut() {
  client?.close();
  client = null;
  clearSession();
  views = new Map();
  current = null;
  showLogin();
}

async function submitLogin(event) {
  event.preventDefault();
  const action = event.submitter?.value === "register" ? "register" : "login";
  const username = $("username").value.trim().toLowerCase();
  const password = $("password").value;
  if (username.length < 3 || password.length < 8) {
    showLoginError("Enter a username (3 or more characters) and a password (8 or more).");
    return;
  }
  for (const button of $("login-form").querySelectorAll("button")) button.disabled = true;
  showLoginError("");
  const answer = await postJson(`/api/auth/${action}`, { username, password });
  for (const button of $("login-form").querySelectorAll("button")) button.disabled = false;
  if (!answer.ok || !answer.body?.token) {
    showLoginError(describeFailure(action, answer));
    return;
  }
  $("password").value = "";
  const { token, expires_at: expiresAt, user } = answer.body;
  saveSession({ token, user: user?.username || sessionFromToken(token)?.user, expiresAt });
  startChat();
}

// -- wiring

function main() {
  $("login-form").addEventListener("submit", submitLogin);
  $("logout").addEventListener("click", logOut);
  $("room-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("room-input").value.trim();
    $("room-input").value = "";
    joinRoom(name);
  });
  $("dm-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const user = $("dm-to").value.trim();
    $("dm-to").value = "";
    openDirect(user);
  });
  $("composer").addEventListener("submit", sendFromComposer);
  $("text").addEventListener("input", () => {
    if (current?.kind === "room" && $("text").value) client.typing(current.name);
  });
  $("leave").addEventListener("click", () => current?.kind === "room" && leaveRoom(current));
  $("load-earlier").addEventListener("click", loadEarlier);
  $("messages").addEventListener("scroll", () => {
    if ($("messages").scrollTop === 0) loadEarlier();
  });
  $("my-status").addEventListener("change", (event) => {
    client.setPresence(event.target.value).then(setPresence, (err) => notice(`Status not changed: ${err.message}`));
  });

  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("token")) {
    const handed = sessionFromToken(hash.get("token"));
    history.replaceState(null, "", location.pathname + location.search); // out of the address bar and history
    if (handed) saveSession(handed);
  }
  session = readSession();
  if (session) startChat();
  else showLogin();
}

main();
