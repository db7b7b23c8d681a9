// pbhost hook, revision 3. Installed by pbhost (`pbhost serve`); pbhost rewrites this file
// when its own copy changes. Turn it off with `pbhost --no-pb-hooks serve` or PBHOST_PB_HOOKS=0.
/// <reference path="../pb_data/types.d.ts" />

// What this file does, on PocketBase's own port:
//
//   GET  /api/pm/list, GET /api/pm/{id}, GET /api/pm/{id}/logs, GET /api/pm/logs (all),
//   POST /api/pm/{id}/restart | stop | start, POST /api/pm/reload
//       Superusers only. Forwarded to pbhost's control API, whose address and token pbhost
//       passes to PocketBase (its child) as PBHOST_API_URL and PBHOST_API_TOKEN_INTERNAL.
//       Status and JSON body are relayed as they are; pbhost down -> 502.
//
//   POST /api/pbhost/logs
//       pbhost (and nothing else: it must show PBHOST_API_TOKEN_INTERNAL) delivers sidecar
//       output here in batches; each line goes to PocketBase's logger, so the dashboard's
//       Logs page shows it. Filter there with:  data.process = "ai-agent"
//
//   GET  /api/pbhost/probe
//       Lets pbhost check that this file is loaded. Public; says nothing but the revision.
//
//   GET  /_pm/ (and /_pm/app.js, /_pm/app.css, /_pm/favicon.svg)
//       pbhost's web dashboard: its static files, fetched from pbhost's control API (which
//       serves them at /) and relayed with their content type and security headers. The page
//       is public and holds no data; it signs in as a superuser and then uses /api/pm/*.
//
// PocketBase runs every handler in an isolated context: a handler sees no top-level variable
// of this file, so each one reads what it needs by itself.

// One handler for every /api/pm route: same method, path and query, sent to pbhost.
const forwardToPbhost = (e) => {
  const base = $os.getenv("PBHOST_API_URL");
  const token = $os.getenv("PBHOST_API_TOKEN_INTERNAL");
  if (!base || !token) {
    return e.json(502, { status: 502, message: "pbhost control API not configured " +
      "(PocketBase was not started by pbhost, or the control API is off)", data: {} });
  }
  if (base.indexOf("unix:") === 0) {
    return e.json(502, { status: 502, message: "pbhost's control API listens on a unix " +
      "socket, which PocketBase cannot forward to; use --api HOST:PORT", data: {} });
  }
  const query = e.request.url.rawQuery;
  if (e.request.url.query().get("follow")) {
    // PocketBase's $http.send waits for the whole answer: a stream cannot pass through here.
    return e.json(400, { status: 400, message: "follow is not available through " +
      "PocketBase; ask pbhost's control API, or poll this route", data: {} });
  }
  const req = {
    url: base + e.request.url.path + (query ? "?" + query : ""),
    method: e.request.method,
    headers: { "Accept": "application/json", "Authorization": "Bearer " + token },
    // seconds: a restart waits for the old process group to stop; a reload for every
    // process it stops or restarts, dependents first
    timeout: e.request.url.path === "/api/pm/reload" ? 300 : 30,
  };
  const body = e.request.method === "POST" ? toString(e.request.body) : "";
  if (body) {
    req.headers["Content-Type"] = "application/json";
    req.body = body;
  }
  let res;
  try {
    res = $http.send(req);
  } catch (err) {
    $app.logger().warn("pbhost control API unreachable", "url", req.url, "error", String(err));
    return e.json(502, { status: 502, message: "pbhost control API unreachable", data: {} });
  }
  if (res.json === null || res.json === undefined) {
    return e.json(502, { status: 502, message: "pbhost control API sent no JSON",
      data: { upstreamStatus: res.statusCode } });
  }
  return e.json(res.statusCode, res.json);
};

routerAdd("GET", "/api/pm/list", forwardToPbhost, $apis.requireSuperuserAuth());
routerAdd("GET", "/api/pm/{id}", forwardToPbhost, $apis.requireSuperuserAuth());
routerAdd("GET", "/api/pm/{id}/logs", forwardToPbhost, $apis.requireSuperuserAuth());
routerAdd("POST", "/api/pm/{id}/restart", forwardToPbhost, $apis.requireSuperuserAuth());
routerAdd("POST", "/api/pm/{id}/stop", forwardToPbhost, $apis.requireSuperuserAuth());
routerAdd("POST", "/api/pm/{id}/start", forwardToPbhost, $apis.requireSuperuserAuth());
routerAdd("POST", "/api/pm/reload", forwardToPbhost, $apis.requireSuperuserAuth());

// Sidecar output from pbhost: {"lines": [{"process", "stream", "text"}...],
//                              "skipped": {"<process>": <count>}}
routerAdd("POST", "/api/pbhost/logs", (e) => {
  const token = $os.getenv("PBHOST_API_TOKEN_INTERNAL");
  const given = e.request.header.get("Authorization");
  // Constant-time comparison; an empty token (not started by pbhost) accepts nothing.
  if (!token || !$security.equal(given, "Bearer " + token)) {
    throw new UnauthorizedError("Only pbhost may send logs here.");
  }
  const body = e.requestInfo().body;
  const logger = $app.logger();
  for (const line of body.lines || []) {
    const text = String(line.text);
    if (line.stream === "stderr") {
      logger.error(text, "process", String(line.process), "stream", "stderr");
    } else {
      logger.info(text, "process", String(line.process), "stream", String(line.stream));
    }
  }
  const skipped = body.skipped || {};
  for (const proc of Object.keys(skipped)) {
    logger.warn("pbhost skipped " + skipped[proc] + " lines of " + proc +
      " (log bridge rate limit; the terminal stream has them all)",
      "process", proc, "skipped", skipped[proc]);
  }
  return e.noContent(204);
}, $apis.skipSuccessActivityLog(), $apis.bodyLimit(1 << 20));

routerAdd("GET", "/api/pbhost/probe", (e) => e.json(200, { pbhost: "hook", revision: 3 }),
  $apis.skipSuccessActivityLog());

// The dashboard's files, from pbhost's control API. Only plain file names are asked for, and
// nothing of the request but the name is passed on (no token, no query, no headers).
routerAdd("GET", "/_pm/{path...}", (e) => {
  const base = $os.getenv("PBHOST_API_URL");
  const name = e.request.pathValue("path") || "";
  if (!/^[A-Za-z0-9_-]*(\.[A-Za-z0-9]+)?$/.test(name)) {
    return e.json(404, { status: 404, message: "The requested resource wasn't found.",
      data: {} });
  }
  if (!base || base.indexOf("unix:") === 0) {
    return e.json(502, { status: 502, message: "pbhost's dashboard needs its control API on " +
      "HOST:PORT (it is off, or on a unix socket PocketBase cannot reach)", data: {} });
  }
  let res;
  try {
    res = $http.send({ url: base + "/" + name, method: "GET", timeout: 10 });
  } catch (err) {
    return e.json(502, { status: 502, message: "pbhost control API unreachable", data: {} });
  }
  if (res.statusCode !== 200) { // not a dashboard file (the control API wants a token for it)
    return e.json(404, { status: 404, message: "The requested resource wasn't found.",
      data: {} });
  }
  const first = (key) => (res.headers[key] || [""])[0];
  for (const key of ["Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options",
                     "Referrer-Policy", "Cross-Origin-Opener-Policy",
                     "Cross-Origin-Resource-Policy", "Cache-Control"]) {
    const value = first(key);
    if (value) {
      e.response.header().set(key, value);
    }
  }
  return e.blob(res.statusCode, first("Content-Type") || "application/octet-stream", res.body);
}, $apis.skipSuccessActivityLog());

// Relative links in the page need the trailing slash.
routerAdd("GET", "/_pm", (e) => e.redirect(302, "/_pm/"), $apis.skipSuccessActivityLog());
