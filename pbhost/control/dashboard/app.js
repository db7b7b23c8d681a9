// pbhost's dashboard: every process, its health and its live log, with restart buttons.
//
// One static page, two homes:
//   - pbhost's control API serves it at /: logs stream live (Server-Sent Events read with
//     fetch(), because EventSource cannot send the Authorization header);
//   - PocketBase's port serves it at /_pm/ through pbhost's hook: PocketBase cannot stream a
//     relayed answer, so logs are polled with a cursor (?after=, the seq of the last line seen).
// Sign-in is a PocketBase superuser's (or, on the control API, pbhost's own token). The token
// lives in localStorage and only ever travels in the Authorization header: never in a URL.
// No framework, no build step: plain DOM, text set with textContent only.
(() => {
  "use strict";

  const VIA_PB = location.pathname.startsWith("/_pm");
  const AUTH_KEY = "pbhost.dashboard.auth";
  const SIGNED_OUT_KEY = "pbhost.dashboard.signedOut"; // sessionStorage: no silent sign-in
  const PB_UI_KEY = "__pb_superusers__/_"; // where PocketBase's own dashboard keeps its sign-in
  const SIGNIN_PATH = "/api/collections/_superusers/auth-with-password";
  const REFRESH_PATH = "/api/collections/_superusers/auth-refresh";
  const LIST_EVERY = 1000;   // ms between process-list refreshes
  const POLL_EVERY = 700;    // ms between log polls (through PocketBase)
  const RETRY_EVERY = 1500;  // ms before a failed log stream or poll is tried again
  const ONE_LINES = 1000;    // one process's kept lines (pbhost's ring)
  const ALL_LINES = 10000;   // every process's: enough for every ring, so the cursor is whole
  const KEEP = 5000;         // lines a view keeps in memory (filter and pause work on these)
  const SHOW = 2000;         // lines in the DOM at most, so a flood cannot freeze the page

  const $ = (id) => document.getElementById(id);

  // A hand-typed hash such as #/p/% is not valid percent-encoding: show it as typed, not throw.
  function safeDecode(text) {
    try { return decodeURIComponent(text); } catch (_) { return text; }
  }

  // The table, the list and the actions are drawn anew every second: a keyboard user's focus
  // (a button tabbed to, a link) moves to the same control in the new rows, instead of being
  // lost to <body> between Tab and Enter.
  function replaceKeepingFocus(box, nodes) {
    const key = focusKey(box);
    box.replaceChildren(...nodes);
    if (key) {
      const again = box.querySelector(key[0]) || (key[1] && box.querySelector(key[1]));
      if (again) again.focus({ preventScroll: true });
    }
  }

  function focusKey(box) {
    const node = document.activeElement;
    if (!node || node === box || !box.contains(node)) return null;
    const action = node.getAttribute("data-action");
    const row = node.closest("[data-id]");
    const id = node.getAttribute("data-id") || (row && row.getAttribute("data-id"));
    if (action) {
      const scope = row ? '[data-id="' + CSS.escape(row.getAttribute("data-id")) + '"] ' : "";
      // ...or, when it is gone (Stop turned into Start), the button in its place.
      const place = Array.prototype.indexOf.call(node.parentElement.children, node) + 1;
      return [scope + '[data-action="' + CSS.escape(action) + '"]',
        scope + "[data-action]:nth-child(" + place + ")"];
    }
    if (id && node.tagName === "A") {
      return [node.hasAttribute("data-id") ? 'a[data-id="' + CSS.escape(id) + '"]'
        : '[data-id="' + CSS.escape(id) + '"] a', null];
    }
    return null;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) {
        node.append(child instanceof Node ? child : String(child));
      }
    }
    return node;
  }

  const sleep = (ms, signal) => new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    if (signal) signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); });
  });

  // -- talking to the API ---------------------------------------------------------------------
  class HttpError extends Error {
    constructor(status, message, data) { super(message); this.status = status; this.data = data; }
  }
  class NetError extends Error {}

  let auth = null; // {token, kind: "superuser" | "pbhost", email}

  function headers(extra) {
    const out = Object.assign({ Accept: "application/json" }, extra || {});
    if (auth) out.Authorization = "Bearer " + auth.token;
    return out;
  }

  async function api(method, path, options) {
    const opts = options || {};
    const init = { method, headers: headers(), cache: "no-store", credentials: "omit",
      signal: opts.signal };
    if (opts.noAuth) delete init.headers.Authorization;
    if (opts.body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(opts.body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new NetError(VIA_PB ? "PocketBase does not answer" : "pbhost does not answer");
    }
    const text = await res.text().catch(() => "");
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (!res.ok) {
      throw new HttpError(res.status, (data && data.message) || res.statusText || "error",
        data && data.data);
    }
    return data;
  }

  const isAuthError = (err) => err instanceof HttpError && (err.status === 401 || err.status === 403);

  // -- sign-in ---------------------------------------------------------------------------------
  function storedAuth() {
    try {
      const value = JSON.parse(localStorage.getItem(AUTH_KEY) || "null");
      return value && typeof value.token === "string" && value.token ? value : null;
    } catch (_) { return null; }
  }

  function pocketbaseDashboardAuth() {
    // Signed in to PocketBase's dashboard (/_/) on this origin: use that sign-in, read-only.
    try {
      const value = JSON.parse(localStorage.getItem(PB_UI_KEY) || "null");
      const record = value && (value.record || value.model);
      if (!value || typeof value.token !== "string" || !value.token) return null;
      if (record && record.collectionName && record.collectionName !== "_superusers") return null;
      return { token: value.token, kind: "superuser", email: (record && record.email) || "" };
    } catch (_) { return null; }
  }

  function keepAuth(value) {
    auth = value;
    localStorage.setItem(AUTH_KEY, JSON.stringify(value));
    sessionStorage.removeItem(SIGNED_OUT_KEY);
  }

  function dropAuth() {
    auth = null;
    localStorage.removeItem(AUTH_KEY);
  }

  async function checkAuth() {
    // Through PocketBase a superuser token is renewed (and checked) by PocketBase itself; on the
    // control API the list answers 200 only for a token it accepts.
    if (VIA_PB && auth.kind === "superuser") {
      const data = await api("POST", REFRESH_PATH);
      if (data && data.token) {
        auth = { token: data.token, kind: "superuser",
          email: (data.record && data.record.email) || auth.email };
      }
    }
    const procs = await api("GET", "/api/pm/list");
    keepAuth(auth);
    return procs;
  }

  function showSignIn(message) {
    stopApp();
    $("app").hidden = true;
    $("signin").hidden = false;
    $("signin-where").textContent = VIA_PB
      ? "Sign in with a PocketBase superuser account to see and steer pbhost's processes."
      : "Sign in with a PocketBase superuser account, or with pbhost's token.";
    $("token-login").hidden = VIA_PB;
    showError("signin-error", message || "");
    showError("token-error", "");
    $("signin-password").value = "";
    $("token-input").value = "";
    const email = $("signin-email");
    (email.value ? $("signin-password") : email).focus();
  }

  function showError(id, message) {
    const node = $(id);
    node.textContent = message;
    node.hidden = !message;
  }

  function signInMessage(err) {
    if (err instanceof NetError) return err.message + ": is it running?";
    if (err instanceof HttpError) {
      if (err.status === 400) return "Wrong email or password, or not a superuser account.";
      if (err.status === 403) return "This account is not a PocketBase superuser.";
      if (err.status === 401) return "pbhost does not accept this sign-in.";
      return err.message;
    }
    return String(err && err.message ? err.message : err);
  }

  async function onSignIn(event) {
    event.preventDefault();
    const identity = $("signin-email").value.trim();
    const password = $("signin-password").value;
    if (!identity || !password) {
      showError("signin-error", "Enter the email and the password of a superuser.");
      return;
    }
    const button = $("signin-submit");
    button.disabled = true;
    showError("signin-error", "");
    try {
      const data = await api("POST", SIGNIN_PATH, { body: { identity, password }, noAuth: true });
      if (!data || typeof data.token !== "string") throw new Error("PocketBase sent no token.");
      if (data.record && data.record.collectionName &&
          data.record.collectionName !== "_superusers") {
        throw new HttpError(403, "not a superuser");
      }
      auth = { token: data.token, kind: "superuser",
        email: (data.record && data.record.email) || identity };
      startApp(await checkAuth());
    } catch (err) {
      auth = null;
      showError("signin-error", signInMessage(err));
      $("signin-password").select();
    } finally {
      button.disabled = false;
    }
  }

  async function onTokenSignIn(event) {
    event.preventDefault();
    const token = $("token-input").value.trim();
    if (!token) { showError("token-error", "Paste the token first."); return; }
    showError("token-error", "");
    auth = { token, kind: "pbhost", email: "" };
    try {
      startApp(await checkAuth());
    } catch (err) {
      auth = null;
      showError("token-error", err instanceof HttpError && err.status === 401
        ? "pbhost does not accept this token." : signInMessage(err));
    }
  }

  function signOut() {
    dropAuth();
    sessionStorage.setItem(SIGNED_OUT_KEY, "1");
    showSignIn("");
  }

  // -- formatting ------------------------------------------------------------------------------
  function fmtDuration(seconds) {
    const s = Math.floor(seconds || 0);
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return "";
    if (n < 1024 * 1024) return (n / 1024).toFixed(0) + " KiB";
    if (n < 1024 * 1024 * 1024) return (n / 1048576).toFixed(1) + " MiB";
    return (n / 1073741824).toFixed(2) + " GiB";
  }

  function fmtTime(iso) {
    const d = new Date(iso);
    if (isNaN(d)) return "";
    const pad = (v, k) => String(v).padStart(k || 2, "0");
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." +
      pad(d.getMilliseconds(), 3);
  }

  function shortPath(path) {
    const parts = path.split("/");
    return path.length > 32 && parts.length > 3 ? ".../" + parts.slice(-3).join("/") : path;
  }

  const STATUS_TONE = { running: "ok", starting: "warn", backoff: "warn", stopping: "warn",
    stopped: "off", crashed: "bad" };
  const RUNNING = new Set(["running", "starting"]);

  function statusBadge(p) {
    return el("span", { class: "badge " + (STATUS_TONE[p.status] || "off"),
      "data-status": p.status }, el("span", { class: "dot", "aria-hidden": "true" }), p.status);
  }

  // Readiness and health come from newer pbhost versions: shown when present, "-" otherwise.
  function healthOf(p) {
    const waiting = Array.isArray(p.waitingFor) ? p.waitingFor : [];
    const note = typeof p.notifyStatus === "string" && p.notifyStatus ? p.notifyStatus : "";
    if (!RUNNING.has(p.status)) return { text: "-", tone: "", note: "" };
    if (waiting.length) return { text: "waiting for " + waiting.join(", "), tone: "warn", note };
    const health = typeof p.health === "string" ? p.health : "";
    const badHealth = /unhealthy|fail|down|error/i.test(health);
    if (p.ready === true) return { text: health || "ready", tone: badHealth ? "bad" : "ok", note };
    if (p.ready === false) return { text: health || "not ready", tone: badHealth ? "bad" : "warn",
      note };
    if (health) return { text: health, tone: badHealth ? "bad" : "ok", note };
    return { text: "-", tone: "", note };
  }

  function memoryText(p) {
    const used = RUNNING.has(p.status) || p.memory ? fmtBytes(p.memory || 0) : "-";
    return typeof p.memoryLimit === "number" ? used + " / " + fmtBytes(p.memoryLimit) : used;
  }

  // -- the process list ------------------------------------------------------------------------
  let procs = [];
  const busy = new Set();     // ids with an action in flight
  let listTimer = 0;
  let listGen = 0;            // bumped by stopApp: a late answer of an old loop is ignored
  let lastOk = 0;

  async function refreshList() {
    const gen = listGen;
    try {
      const data = await api("GET", "/api/pm/list");
      if (gen !== listGen) return;
      lastOk = Date.now();
      setProcs(Array.isArray(data) ? data : []);
      banner("");
    } catch (err) {
      if (gen !== listGen) return;
      if (isAuthError(err)) { dropAuth(); showSignIn("Your sign-in is no longer valid; sign in again."); return; }
      banner(problemText(err));
    }
  }

  function problemText(err) {
    if (err instanceof NetError) {
      return VIA_PB
        ? "PocketBase does not answer (it serves this page: stopped or restarting?). " +
          "Retrying... While it is stopped, use `pbhost start pocketbase` or the dashboard on " +
          "pbhost's control API."
        : "pbhost does not answer (stopped?). Retrying...";
    }
    if (err instanceof HttpError && err.status === 503 && auth && auth.kind === "superuser" &&
        !VIA_PB) {
      return err.message + " Sign out and use pbhost's token to steer processes meanwhile.";
    }
    return String(err.message || err);
  }

  function listLoop() {
    clearTimeout(listTimer);
    const gen = listGen;
    refreshList().finally(() => {
      if (gen === listGen) listTimer = setTimeout(listLoop, LIST_EVERY);
    });
  }

  function setProcs(list) {
    procs = list;
    renderTable();
    renderNav();
    if (current.view === "logs" && current.id) renderDetail();
    $("updated").textContent = "updated " + new Date(lastOk).toLocaleTimeString();
  }

  function procFilter() {
    return $("proc-filter").value.trim().toLowerCase();
  }

  function renderNav() {
    const q = procFilter();
    const items = procs.filter((p) => !q || p.id.toLowerCase().includes(q)).map((p) =>
      el("li", null, el("a", { href: "#/p/" + encodeURIComponent(p.id), "data-id": p.id,
        "aria-current": current.view === "logs" && current.id === p.id ? "page" : null },
      el("span", { class: "dot " + (STATUS_TONE[p.status] || "off"), title: p.status,
        "aria-hidden": "true" }), el("span", { class: "nav-name", text: p.id }),
      el("span", { class: "sr-only", text: " (" + p.status + ")" }))));
    replaceKeepingFocus($("proc-nav"), items);
  }

  function actionButtons(p, small) {
    const pending = busy.has(p.id);
    const st = p.status;
    // While its action runs a button is aria-disabled, not disabled: a disabled button cannot
    // hold the focus, and a keyboard user's place would be lost to <body>.
    const make = (action, label, tone, enabled) => el("button", {
      type: "button", class: "btn " + tone + (small ? " sm" : ""), "data-action": action,
      "aria-label": label + " " + p.id, disabled: !enabled && !pending,
      "aria-disabled": pending ? "true" : null,
      onclick: () => { if (!busy.has(p.id)) act(p.id, action); },
    }, label);
    // Restart works in any state; Stop while it runs (or waits to), Start once it is halted.
    const halted = st === "stopped" || st === "crashed";
    return [
      make("restart", "Restart", "secondary", st !== "stopping"),
      halted ? make("start", "Start", "primary", true)
        : make("stop", "Stop", "secondary", st !== "stopping"),
    ];
  }

  function renderTable() {
    const q = procFilter();
    const rows = procs.filter((p) => !q || p.id.toLowerCase().includes(q)).map((p) => {
      const h = healthOf(p);
      const running = RUNNING.has(p.status);
      const cell = (col, label, content, cls) => el("td", { "data-col": col, "data-label": label,
        class: cls || null }, content);
      return el("tr", { "data-id": p.id },
        cell("id", "Process", el("div", { class: "pname" },
          el("a", { href: "#/p/" + encodeURIComponent(p.id), text: p.id }),
          p.devMode ? el("span", { class: "chip", title: "devMode: restarts when its files change",
            text: "dev" }) : null)),
        cell("status", "Status", statusBadge(p)),
        cell("health", "Health", el("span", { class: "health " + h.tone }, h.text,
          h.note ? el("span", { class: "sub", text: h.note }) : null)),
        cell("pid", "PID", p.pid === null || p.pid === undefined ? "-" : String(p.pid), "num"),
        cell("uptime", "Uptime", running ? fmtDuration(p.uptime) : "-", "num"),
        cell("restarts", "Restarts", String(p.restartCount || 0), "num"),
        cell("cpu", "CPU", running ? (p.cpu || 0).toFixed(1) + "%" : "-", "num"),
        cell("memory", "Memory", memoryText(p), "num"),
        cell("error", "Last error", p.lastError
          ? el("span", { class: "error-text", title: p.lastError, text: p.lastError }) : "-"),
        cell("actions", "Actions", el("div", { class: "row-actions" }, ...actionButtons(p, true))));
    });
    if (!rows.length) {
      rows.push(el("tr", null, el("td", { colspan: 10, class: "empty",
        text: procs.length ? "No process matches the search." : "Loading..." })));
    }
    replaceKeepingFocus($("procs-body"), rows);
  }

  function renderDetail() {
    const p = procs.find((x) => x.id === current.id);
    const facts = $("facts");
    if (!p) {
      facts.hidden = true;
      $("detail-actions").replaceChildren();
      return;
    }
    const h = healthOf(p);
    const running = RUNNING.has(p.status);
    const fact = (label, value) => [el("div", { class: "fact" }, el("dt", { text: label }),
      el("dd", null, value))];
    facts.replaceChildren(
      ...fact("Status", statusBadge(p)),
      ...fact("Health", el("span", { class: "health " + h.tone }, h.text)),
      ...fact("PID", p.pid === null || p.pid === undefined ? "-" : String(p.pid)),
      ...fact("Uptime", running ? fmtDuration(p.uptime) : "-"),
      ...fact("Restarts", String(p.restartCount || 0)),
      ...fact("CPU", running ? (p.cpu || 0).toFixed(1) + "%" : "-"),
      ...fact("Memory", memoryText(p)),
      ...fact("Runs with", p.interpreter ? el("span", { title: p.interpreter,
        text: shortPath(p.interpreter) }) : "-"),
      ...fact("Dev mode", p.devMode ? "on" : "off"),
      ...(h.note ? fact("Status note", h.note) : []),
      ...(p.lastError ? fact("Last error", el("span", { class: "error-text wrap",
        text: p.lastError })) : []));
    facts.hidden = false;
    replaceKeepingFocus($("detail-actions"), actionButtons(p, false));
  }

  // -- actions ---------------------------------------------------------------------------------
  function confirmDialog(title, text, ok) {
    const dialog = $("confirm");
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = ok;
    // The button that opened it may be redrawn meanwhile: give the focus back to its successor.
    const back = focusKey(document.body);
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => {
        if (back && (!document.activeElement || document.activeElement === document.body)) {
          const again = document.querySelector(back[0]) || (back[1] && document.querySelector(back[1]));
          if (again) again.focus({ preventScroll: true });
        }
        resolve(dialog.returnValue === "ok");
      }, { once: true });
      dialog.returnValue = "cancel";
      dialog.showModal();
      $("confirm-cancel").focus();
    });
  }

  const DONE = { restart: "restarted", stop: "stopped", start: "started" };

  async function act(id, action) {
    if (id === "pocketbase" && action !== "start") {
      const note = VIA_PB
        ? " This page is served by PocketBase, so it loses its connection" +
          (action === "stop" ? " until PocketBase is started again (`pbhost start pocketbase`, " +
            "or the dashboard on pbhost's control API)." : " for a moment.")
        : " Its API and dashboard are unavailable" + (action === "stop" ? " until it is started " +
            "again." : " for a moment.") + " The sidecars keep running.";
      const verb = action === "stop" ? "Stop" : "Restart";
      const doing = action === "stop" ? "Stopping" : "Restarting";
      if (!await confirmDialog(verb + " PocketBase?", doing + " PocketBase interrupts every " +
          "request it serves." + note, verb + " PocketBase")) {
        return;
      }
    }
    busy.add(id);
    renderTable();
    renderDetail();
    try {
      const p = await api("POST", "/api/pm/" + encodeURIComponent(id) + "/" + action);
      toast(p.id + " " + DONE[action] + (p.pid ? " (pid " + p.pid + ")" : ""));
      procs = procs.map((x) => (x.id === p.id ? Object.assign({}, x, p) : x));
    } catch (err) {
      if (isAuthError(err)) { dropAuth(); showSignIn("Your sign-in is no longer valid; sign in again."); return; }
      if (VIA_PB && id === "pocketbase" && (err instanceof NetError || (err instanceof HttpError &&
          err.status >= 500))) {
        toast("PocketBase is " + (action === "stop" ? "stopping" : "restarting") +
          "; this page reconnects when it answers again.");
      } else {
        toast("Could not " + action + " " + id + ": " + err.message, "error");
      }
    } finally {
      busy.delete(id);
      refreshList();
    }
  }

  // -- reloading the process file (POST /api/pm/reload, as `pbhost reload`) ---------------------
  const RELOAD_KINDS = ["added", "removed", "restarted", "updated"];

  function reloadSummary(res) {
    const parts = RELOAD_KINDS.filter((k) => (res[k] || []).length)
      .map((k) => k + " " + res[k].join(", "));
    if (!parts.length) return "Reloaded: nothing changed";
    const same = (res.unchanged || []).length;
    return "Reloaded: " + parts.join("; ") + (same ? "; " + same + " unchanged" : "");
  }

  function showReloadErrors(message, errors) {
    const box = $("reload-errors");
    box.hidden = !message;
    if (!message) return;
    $("reload-errors-title").textContent = message;
    $("reload-errors-list").replaceChildren(...(errors || []).map((e) => el("li", null, e)));
  }

  async function reloadConfig() {
    const button = $("reload-config");
    if (button.disabled) return;
    if (!await confirmDialog("Reload the process file?", "pbhost reads its process file " +
        "again and applies what changed: added processes start, removed ones stop, changed " +
        "ones restart. The others and PocketBase are left alone. If the file has errors, " +
        "nothing changes.", "Reload")) {
      return;
    }
    button.disabled = true;
    button.textContent = "Reloading...";
    showReloadErrors(null);
    try {
      toast(reloadSummary(await api("POST", "/api/pm/reload")));
    } catch (err) {
      if (isAuthError(err)) { dropAuth(); showSignIn("Your sign-in is no longer valid; sign in again."); return; }
      if (err instanceof HttpError && err.status === 422) {
        showReloadErrors(err.message, err.data && err.data.errors);
      } else {
        toast("Could not reload: " + err.message, "error");
      }
    } finally {
      button.disabled = false;
      button.textContent = "Reload config";
      refreshList();
    }
  }

  function toast(text, tone) {
    const node = el("div", { class: "toast " + (tone || ""), role: tone === "error" ? "alert" : null },
      text);
    $("toasts").append(node);
    setTimeout(() => node.remove(), tone === "error" ? 8000 : 4000);
  }

  function banner(text) {
    const node = $("banner");
    if (node.textContent !== text) node.textContent = text;
    node.hidden = !text;
  }

  // -- the log view ----------------------------------------------------------------------------
  // Lines arrive in batches (a stream chunk, a poll); they are kept (at most KEEP) and drawn
  // once per animation frame, at most SHOW in the DOM: a flood costs one frame's work per frame.
  class LogView {
    constructor(box) {
      this.box = box;
      this.lines = [];
      this.pending = [];
      this.frame = 0;
      this.paused = false;
      this.unseen = 0;
      this.query = "";
      this.stream = "";
      this.merged = false;
      this.note = "";
      box.addEventListener("scroll", () => this.updateJump());
    }

    reset(merged) {
      this.lines = [];
      this.pending = [];
      this.unseen = 0;
      this.merged = merged;
      this.note = "";
      this.box.replaceChildren();
      this.box.classList.toggle("merged", merged);
      this.updateState();
    }

    matches(rec) {
      if (rec.marker) return true;
      if (this.stream && rec.stream !== this.stream) return false;
      return !this.query || rec.text.toLowerCase().includes(this.query) ||
        (this.merged && rec.id.toLowerCase().includes(this.query));
    }

    add(recs) {
      if (!recs.length) return;
      for (const rec of recs) this.lines.push(rec);
      if (this.lines.length > KEEP) this.lines.splice(0, this.lines.length - KEEP);
      if (this.paused) {
        this.unseen += recs.length;
        this.updateState();
        return;
      }
      for (const rec of recs) if (this.matches(rec)) this.pending.push(rec);
      if (this.pending.length > SHOW) this.pending.splice(0, this.pending.length - SHOW);
      this.schedule();
    }

    marker(text) {
      this.add([{ marker: true, text, stream: "system", id: "" }]);
    }

    schedule() {
      if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
    }

    atBottom() {
      const b = this.box;
      return b.scrollHeight - b.scrollTop - b.clientHeight < 24;
    }

    flush() {
      this.frame = 0;
      if (!this.pending.length) return;
      const box = this.box;
      const follow = this.atBottom();
      const frag = document.createDocumentFragment();
      for (const rec of this.pending) frag.append(this.row(rec));
      this.pending = [];
      box.append(frag);
      const extra = box.childElementCount - SHOW;
      if (extra > 0) {
        const before = box.scrollHeight;
        const range = document.createRange();
        range.setStartBefore(box.firstElementChild);
        range.setEndAfter(box.children[extra - 1]);
        range.deleteContents();
        if (!follow) box.scrollTop -= before - box.scrollHeight;
      }
      if (follow) box.scrollTop = box.scrollHeight;
      this.updateJump();
    }

    redraw() {
      this.box.replaceChildren();
      this.pending = this.lines.filter((r) => this.matches(r)).slice(-SHOW);
      if (this.frame) cancelAnimationFrame(this.frame);
      this.frame = 0;
      this.flush();
      this.box.scrollTop = this.box.scrollHeight;
      this.updateState();
    }

    row(rec) {
      if (rec.marker) return el("div", { class: "ln marker", text: rec.text });
      const cls = "ln" + (rec.stream === "stderr" ? " err" : rec.stream === "system" ? " sys" : "");
      return el("div", { class: cls, "data-seq": rec.seq, "data-stream": rec.stream },
        el("time", { datetime: rec.time, text: fmtTime(rec.time) }),
        this.merged ? el("span", { class: "src", text: rec.id }) : null,
        el("span", { class: "txt" }, ...this.highlight(rec.text)));
    }

    highlight(text) {
      if (!this.query) return [text];
      const out = [];
      const lower = text.toLowerCase();
      let at = 0;
      for (let i = lower.indexOf(this.query); i >= 0; i = lower.indexOf(this.query, at)) {
        if (i > at) out.push(text.slice(at, i));
        out.push(el("mark", { text: text.slice(i, i + this.query.length) }));
        at = i + this.query.length;
      }
      if (at < text.length) out.push(text.slice(at));
      return out;
    }

    setPaused(paused) {
      this.paused = paused;
      const button = $("log-pause");
      button.setAttribute("aria-pressed", String(paused));
      button.textContent = paused ? "Resume" : "Pause";
      if (!paused) {
        this.unseen = 0;
        this.redraw();
      }
      this.updateState();
    }

    setNote(text) {
      this.note = text;
      this.updateState();
    }

    updateState() {
      const parts = [];
      if (this.paused) parts.push("paused" + (this.unseen ? ", " + this.unseen + " new lines" : ""));
      else if (this.note) parts.push(this.note);
      $("log-state").textContent = parts.join(" ");
    }

    updateJump() {
      $("log-jump").hidden = this.atBottom();
    }
  }

  // One log source at a time (one stream per page): the view's, restarted when it changes.
  class LogFeed {
    constructor(view, id) {
      this.view = view;
      this.id = id;                 // null: every process
      this.cursor = new Map();      // id -> seq of the last line seen
      this.abort = new AbortController();
      this.path = id === null ? "/api/pm/logs"
        : "/api/pm/" + encodeURIComponent(id) + "/logs";
      this.lines = id === null ? ALL_LINES : ONE_LINES;
    }

    stop() { this.abort.abort(); }

    get stopped() { return this.abort.signal.aborted; }

    after() {
      if (!this.cursor.size) return "";
      if (this.id !== null) return String(this.cursor.get(this.id) || 0);
      return [...this.cursor].map(([k, v]) => k + ":" + v).join(",");
    }

    deliver(recs) {
      const fresh = [];
      for (const rec of recs) {
        let last = this.cursor.get(rec.id) || 0;
        if (rec.seq && rec.seq <= last) {
          // pbhost answers only lines after the cursor, unless the cursor is from an earlier
          // pbhost run (it was restarted): then its lines are numbered from 1 again.
          fresh.push({ marker: true, stream: "system", id: rec.id,
            text: "... pbhost was restarted: " + rec.id + "'s lines from its new run" });
          last = 0;
        }
        if (last && rec.seq > last + 1) {
          // A gap: lines that left pbhost's ring before this view got them, or that pbhost
          // dropped because the view could not keep up.
          fresh.push({ marker: true, stream: "system", id: rec.id,
            text: "... " + (rec.seq - last - 1) + " lines of " + rec.id + " not shown here " +
              "(too many too fast; pbhost keeps the last " + ONE_LINES + " of each process)" });
        }
        if (rec.seq) this.cursor.set(rec.id, rec.seq);
        fresh.push(rec);
      }
      this.view.add(fresh);
    }

    async run() {
      try {
        await (VIA_PB ? this.poll() : this.follow());
      } catch (err) {
        if (err && err.name !== "AbortError") console.error(err);
      }
    }

    fail(err) {
      if (isAuthError(err)) { dropAuth(); showSignIn("Your sign-in is no longer valid; sign in again."); this.stop(); return; }
      this.view.setNote(err instanceof NetError ? "reconnecting..." : "log: " + err.message);
    }

    // Through PocketBase: poll with the cursor; a full page means more is waiting.
    async poll() {
      let full = false;
      while (!this.stopped) {
        const after = this.after();
        const query = "?lines=" + this.lines + (after ? "&after=" + after : "");
        try {
          const recs = await api("GET", this.path + query, { signal: this.abort.signal });
          if (this.stopped) return;
          this.deliver(Array.isArray(recs) ? recs : []);
          this.view.setNote("live");
          full = Array.isArray(recs) && recs.length >= this.lines;
        } catch (err) {
          if (this.stopped) return;
          this.fail(err);
          await sleep(RETRY_EVERY, this.abort.signal);
          continue;
        }
        await sleep(full ? 100 : POLL_EVERY, this.abort.signal);
      }
    }

    // On the control API: Server-Sent Events through fetch(), resumed with the cursor.
    async follow() {
      while (!this.stopped) {
        const after = this.after();
        const url = this.path + "?follow=1&lines=" + this.lines + (after ? "&after=" + after : "");
        try {
          const res = await fetch(url, { headers: headers({ Accept: "text/event-stream" }),
            cache: "no-store", credentials: "omit", signal: this.abort.signal });
          if (!res.ok) {
            const data = await res.json().catch(() => ({}));
            throw new HttpError(res.status, data.message || res.statusText);
          }
          this.view.setNote("live");
          await this.read(res.body.getReader());
          if (!this.stopped) this.view.setNote("reconnecting...");
        } catch (err) {
          if (this.stopped || (err && err.name === "AbortError")) return;
          this.fail(err instanceof HttpError ? err : new NetError(String(err)));
        }
        await sleep(RETRY_EVERY, this.abort.signal);
      }
    }

    async read(reader) {
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done || this.stopped) return;
        buffer += decoder.decode(value, { stream: true });
        const events = buffer.split("\n\n");
        buffer = events.pop();
        const recs = [];
        for (const event of events) {
          let kind = "message";
          let data = "";
          for (const line of event.split("\n")) {
            if (line.startsWith("event:")) kind = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).trim();
          }
          if (!data) continue; // a comment: keep-alive
          let value;
          try { value = JSON.parse(data); } catch (_) { continue; }
          // "dropped" needs no line of its own: the gap in the seq numbers shows where.
          if (kind !== "dropped") recs.push(value);
        }
        this.deliver(recs);
      }
    }
  }

  // -- views -----------------------------------------------------------------------------------
  const current = { view: "", id: null };
  let logView = null;
  let feed = null;

  function route() {
    const hash = location.hash || "#/";
    const match = hash.match(/^#\/p\/(.+)$/);
    if (hash === "#/logs") showLogs(null);
    else if (match) showLogs(safeDecode(match[1]));
    else showOverview();
  }

  function markNav() {
    const set = (node, on) => (on ? node.setAttribute("aria-current", "page")
      : node.removeAttribute("aria-current"));
    set($("nav-processes"), current.view === "overview" || (current.view === "logs" && current.id !== null));
    set($("nav-logs"), current.view === "logs" && current.id === null);
    set($("nav-all-logs"), current.view === "logs" && current.id === null);
    renderNav();
  }

  function showOverview() {
    if (feed) { feed.stop(); feed = null; }
    current.view = "overview";
    current.id = null;
    $("view-logs").hidden = true;
    $("view-overview").hidden = false;
    document.title = "Processes - pbhost";
    markNav();
  }

  function showLogs(id) {
    const same = current.view === "logs" && current.id === id && feed;
    current.view = "logs";
    current.id = id;
    $("view-overview").hidden = true;
    $("view-logs").hidden = false;
    const title = $("logs-title");
    if (id === null) {
      title.replaceChildren("Logs ", el("span", { class: "crumb-sep", text: "/" }), " all processes");
      document.title = "Logs - pbhost";
      $("facts").hidden = true;
      $("detail-actions").replaceChildren();
    } else {
      title.replaceChildren(el("a", { href: "#/", text: "Processes" }),
        el("span", { class: "crumb-sep", text: "/" }), el("span", { text: id }));
      document.title = id + " - pbhost";
      renderDetail();
    }
    markNav();
    if (same) return;
    if (feed) feed.stop();
    logView.reset(id === null);
    feed = new LogFeed(logView, id);
    feed.run();
  }

  // -- start and stop --------------------------------------------------------------------------
  let started = false;

  function startApp(list) {
    $("signin").hidden = true;
    $("app").hidden = false;
    $("who").textContent = auth.kind === "pbhost" ? "pbhost token" : auth.email;
    $("nav-pocketbase").hidden = !VIA_PB;
    listGen += 1;
    started = true;
    if (list) { lastOk = Date.now(); setProcs(list); }
    current.view = "";
    route();
    listLoop();
  }

  function stopApp() {
    listGen += 1;
    clearTimeout(listTimer);
    if (feed) { feed.stop(); feed = null; }
    started = false;
  }

  function wire() {
    logView = new LogView($("log"));
    $("signin-form").addEventListener("submit", onSignIn);
    $("token-form").addEventListener("submit", onTokenSignIn);
    $("signout").addEventListener("click", signOut);
    $("reload-config").addEventListener("click", reloadConfig);
    $("reload-errors-close").addEventListener("click", () => showReloadErrors(null));
    $("proc-filter").addEventListener("input", () => { renderNav(); renderTable(); });
    let searchTimer = 0;
    $("log-search").addEventListener("input", () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => {
        logView.query = $("log-search").value.trim().toLowerCase();
        logView.redraw();
      }, 120);
    });
    $("log-stream").addEventListener("change", () => {
      logView.stream = $("log-stream").value;
      logView.redraw();
    });
    $("log-pause").addEventListener("click", () => logView.setPaused(!logView.paused));
    $("log-clear").addEventListener("click", () => {
      logView.lines = [];
      logView.pending = [];
      logView.box.replaceChildren();
      logView.updateJump();
    });
    $("log-jump").addEventListener("click", () => {
      logView.box.scrollTop = logView.box.scrollHeight;
      logView.updateJump();
    });
    window.addEventListener("hashchange", () => { if (started) route(); });
    document.addEventListener("keydown", (event) => {
      const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName);
      if (event.key === "/" && !typing && started && current.view === "logs") {
        event.preventDefault();
        $("log-search").focus();
      }
    });
    window.addEventListener("storage", (event) => {
      // Signed out (or in as someone else) in another tab.
      if (event.key === AUTH_KEY && started && !storedAuth()) showSignIn("");
    });
  }

  async function boot() {
    wire();
    auth = storedAuth();
    if (!auth && VIA_PB && !sessionStorage.getItem(SIGNED_OUT_KEY)) {
      auth = pocketbaseDashboardAuth();
    }
    if (!auth) { showSignIn(""); return; }
    try {
      startApp(await checkAuth());
    } catch (err) {
      if (isAuthError(err)) {
        dropAuth();
        showSignIn("Your sign-in is no longer valid; sign in again.");
      } else {
        startApp(null); // pbhost or PocketBase is down for now: the list loop says so and retries
        banner(problemText(err));
      }
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
  else boot();
})();
