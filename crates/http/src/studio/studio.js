// Cove studio: a page per resource, drawn from the control plane's own API.
//
// Every string that comes from the workspace (names, file names, log lines, reasons, YAML values) is
// put into the page as text (DOM text nodes), never parsed as markup. Links are built only from the
// studio's own routes, with every path segment encoded.
"use strict";

const state = { me: null, timers: [], followLog: null };
const TERMINAL = ["Completed", "Failed", "Canceled"];

// ---- DOM -------------------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

function link(route, text) {
  return h("a", { href: "#/" + route.map(encodeURIComponent).join("/") }, text);
}

function table(headers, rows, empty) {
  if (!rows.length) return h("p", { class: "muted" }, empty || "None.");
  return h("table", {}, h("thead", {}, h("tr", {}, headers.map((t) => h("th", {}, t)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))));
}

function props(pairs) {
  return h("dl", { class: "props" }, pairs.filter((p) => p[1] !== null && p[1] !== undefined && p[1] !== "")
    .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function status(s) {
  return h("span", { class: "status " + s, "data-status": s }, s);
}

function progressBar(p) {
  const total = Math.max(p.batches_total, 1);
  const done = (100 * p.batches_succeeded) / total;
  const failed = (100 * p.batches_failed) / total;
  const bar = h("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": p.batches_total,
    "aria-valuenow": p.batches_succeeded + p.batches_failed },
    h("div", { class: "done" }), h("div", { class: "failed" }));
  bar.children[0].style.width = done + "%";
  bar.children[1].style.left = done + "%";
  bar.children[1].style.width = failed + "%";
  const label = h("div", { class: "bar-label" },
    `${p.batches_succeeded + p.batches_failed} of ${p.batches_total} mini-batches done` +
    (p.batches_failed ? ` (${p.batches_failed} failed)` : "") + (p.batches_running ? `, ${p.batches_running} running` : "") +
    ` · ${p.items_ok} files scored` + (p.items_failed ? `, ${p.items_failed} failed` : ""));
  return h("div", { class: "progress" }, bar, label);
}

function errorBox(e) {
  if (e && e.status === 403) return [h("h1", {}, "Forbidden"), h("div", { class: "error", id: "forbidden" }, e.message)];
  return h("div", { class: "error" }, (e && e.message) || String(e));
}

// ---- API -------------------------------------------------------------------------------------------

async function api(method, path, body, headers) {
  const opts = { method, headers: Object.assign({}, headers || {}), credentials: "same-origin" };
  if (method !== "GET" && method !== "HEAD" && state.me) opts.headers["x-cove-csrf"] = state.me.csrf;
  if (body instanceof Blob) opts.body = body;
  else if (body !== undefined) {
    opts.headers["content-type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(path, opts);
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (!resp.ok) {
    const err = new Error((data && data.message) || text || resp.statusText);
    err.status = resp.status;
    throw err;
  }
  return data;
}

const enc = encodeURIComponent;

// ---- Shell -----------------------------------------------------------------------------------------

const PAGES = [
  ["endpoints", "Endpoints"], ["jobs", "Jobs"], ["invoke", "Invoke"], ["models", "Models"], ["data", "Data"],
  ["datastores", "Datastores"], ["tokens", "Tokens"], ["audit", "Audit log"], ["diagnose", "Diagnose"],
];

function every(ms, fn) {
  const id = setInterval(fn, ms);
  state.timers.push(id);
}

function shell(current) {
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  if (!state.me) {
    nav.replaceChildren();
    who.replaceChildren();
    return;
  }
  nav.replaceChildren(...PAGES.filter(([id]) => id !== "tokens" || state.me.role === "owner")
    .map(([id, label]) => h("a", { href: "#/" + id, class: id === current ? "active" : null, id: "nav-" + id }, label)));
  who.replaceChildren(
    h("span", {}, `token ${state.me.token_id} (${state.me.role}${state.me.endpoint ? ", endpoint " + state.me.endpoint : ""})`),
    h("button", { class: "small secondary", id: "sign-out", onclick: signOut }, "Sign out"));
}

// Goes to a page: a changed hash renders it (hashchange), an unchanged one is rendered again here.
function navigate(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

async function signOut() {
  try { await api("DELETE", "/studio/session"); } catch (_) { /* the session is gone either way */ }
  state.me = null;
  navigate("#/");
}

function signInPage(message) {
  shell(null);
  const token = h("input", { type: "password", id: "token", autocomplete: "off", placeholder: "cove_…" });
  const form = h("form", { class: "card signin", id: "sign-in" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Use a token of this workspace (cove token create, or the owner token)."),
    message ? h("div", { class: "error" }, message) : null,
    h("label", { for: "token" }, "Token"), token,
    h("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      state.me = await api("POST", "/studio/session", { token: token.value });
      navigate("#/endpoints");
    } catch (e) {
      signInPage(e.message);
    }
  });
  document.getElementById("main").replaceChildren(form);
}

async function render() {
  state.timers.forEach(clearInterval);
  state.timers = [];
  const main = document.getElementById("main");
  if (!state.me) {
    try { state.me = await api("GET", "/studio/session"); } catch (_) { return signInPage(); }
  }
  const [route, query] = location.hash.replace(/^#\/?/, "").split("?");
  const parts = route.split("/").filter(Boolean).map(decodeURIComponent);
  const page = parts[0] || "endpoints";
  shell(page);
  const view = h("div", { id: "page-" + page });
  main.replaceChildren(view);
  try {
    await (ROUTES[page] || notFound)(view, parts.slice(1), new URLSearchParams(query || ""));
  } catch (e) {
    if (e.status === 401) {
      state.me = null;
      return signInPage(e.message);
    }
    view.replaceChildren(...[errorBox(e)].flat());
  }
}

async function notFound(view) {
  view.append(h("h1", {}, "Not found"), h("p", {}, "No such page."));
}

// ---- Pages -----------------------------------------------------------------------------------------

async function endpointsPage(view, args) {
  if (args.length) return endpointPage(view, args[0]);
  const endpoints = await api("GET", "/api/v1/endpoints");
  view.append(h("h1", {}, "Endpoints"), table(
    ["Name", "Default deployment", "Deployments", "Scoring URI", "Who can reach it"],
    endpoints.map((e) => [link(["endpoints", e.name], e.name), e.default_deployment || "—", e.deployments.join(", "),
      h("code", {}, e.scoring_uri), e.network_access]),
    "No endpoints yet: cove endpoint create -f endpoint.yml"));
}

async function endpointPage(view, name) {
  const [e, deployments] = await Promise.all([
    api("GET", `/api/v1/endpoints/${enc(name)}`), api("GET", `/api/v1/endpoints/${enc(name)}/deployments`)]);
  view.append(h("h1", {}, "Endpoint ", e.name),
    props([["Description", e.description], ["Default deployment", e.default_deployment || "—"],
      ["Scoring URI", h("code", {}, e.scoring_uri)], ["Who can reach it", e.network_access],
      ["Created", e.created_at], ["Tags", Object.entries(e.tags || {}).map(([k, v]) => `${k}=${v}`).join(", ")]]),
    h("p", {}, link(["invoke"], "Invoke this endpoint"), " · ", link(["jobs"], "Jobs")),
    h("h2", {}, "Deployments"),
    ...deployments.map((d) => h("div", { class: "card deployment" },
      h("h2", {}, d.name, d.is_default ? " (default)" : ""),
      props([
        ["Model", `${d.model.name}:${d.model.version}`],
        ["Scoring", d.onnx_model ? `no-code ONNX (${d.onnx_model})` : d.builtin_script ? `built-in ${d.builtin_script} driver`
          : d.scoring_script || "—"],
        ["Code", d.code_uri], ["Compute", d.compute], ["Sandbox", d.sandbox],
        ["Environment", d.environment ? `${d.environment.source} (${d.environment.interpreter}, build ${d.environment.key})`
          : `the workspace's interpreter (${d.python})`],
        ["Mini-batch size", d.settings.mini_batch_size], ["Instances", d.settings.instance_count],
        ["Concurrency per instance", d.settings.max_concurrency_per_instance],
        ["Output", `${d.settings.output_action}${d.settings.output_file_name ? " → " + d.settings.output_file_name : ""}`],
        ["Retries", `${d.settings.retry_settings.max_retries} × ${d.settings.retry_settings.timeout} s`],
        ["Error threshold", d.settings.error_threshold], ["Logging level", d.settings.logging_level],
        ["Egress", (d.egress || []).join(", ")], ["Description", d.description], ["Created", d.created_at],
      ]))));
}

async function jobsPage(view, args) {
  if (args.length) return jobPage(view, args[0]);
  view.append(h("h1", {}, "Jobs"));
  const list = h("div", { id: "job-list" });
  view.append(list);
  const draw = async () => {
    const jobs = await api("GET", "/api/v1/jobs");
    list.replaceChildren(table(["Job", "Endpoint", "Deployment", "Status", "Progress", "Created", "Finished"],
      jobs.map((j) => [link(["jobs", j.name], j.name), j.endpoint_name, j.deployment_name, status(j.status),
        progressBar(j.progress), j.created_at, j.finished_at || ""]), "No jobs yet."));
    return jobs.some((j) => !TERMINAL.includes(j.status));
  };
  if (await draw()) every(1500, () => draw().catch(() => {}));
}

async function jobPage(view, name) {
  const base = `/api/v1/jobs/${enc(name)}`;
  const summary = h("div", { id: "job-summary" });
  const logs = h("div", { id: "job-logs" });
  const downloads = h("div", { id: "job-downloads" });
  const isolation = h("div", { id: "job-isolation" });
  view.append(h("h1", {}, "Job ", name), summary, h("h2", {}, "Outputs"), downloads, h("h2", {}, "Logs"), logs,
    h("h2", {}, "Isolation"), isolation);
  let job = null;
  const draw = async () => {
    job = await api("GET", base);
    const attempts = job.attempts || [];
    const running = !TERMINAL.includes(job.status);
    summary.replaceChildren();
    append(summary, [
      props([["Status", status(job.status)], ["Endpoint", link(["endpoints", job.endpoint_name], job.endpoint_name)],
        ["Deployment", job.deployment_name], ["Compute", job.compute], ["Input", h("code", {}, job.input.uri)],
        ["Output", h("code", {}, job.output_uri)], ["Created", job.created_at], ["Finished", job.finished_at],
        ["Reason", job.error], ["Compute state", job.compute_state]]),
      progressBar(job.progress),
      running && job.status !== "CancelRequested"
        ? h("button", { class: "secondary", id: "cancel", onclick: () => api("POST", `${base}/cancel`, {}).then(draw) }, "Cancel job")
        : null,
      h("h2", {}, "Mini-batches"),
      table(["Mini-batch", "Attempt", "Node", "Process", "Started", "Outcome", "Reason"],
        attempts.slice(0, 500).map((a) => [a.mini_batch, a.attempt, a.node, a.process, a.started_at,
          a.outcome || "running", a.reason || ""]), "No mini-batch has started yet."),
      job.failed_batches.length ? [h("h2", {}, "Failed mini-batches"), table(["Mini-batch", "First file", "Files", "Reason"],
        job.failed_batches.map((b) => [b.index, b.first_file, b.files, b.reason]))] : null]);
    // What the first attempt ran under, drawn once (so an opened record stays open while the job runs).
    const recorded = attempts.find((a) => a.isolation);
    if (recorded && !isolation.dataset.drawn) {
      isolation.dataset.drawn = "yes";
      isolation.replaceChildren(h("details", {}, h("summary", {}, `Mini-batch ${recorded.mini_batch}, attempt ${recorded.attempt}` +
        ` on ${recorded.node}: sandbox, namespaces, file view, limits and network attempts`),
        h("pre", { id: "isolation" }, JSON.stringify(recorded.isolation, null, 2))));
    } else if (!recorded) {
      isolation.replaceChildren(h("p", { class: "muted" }, "Recorded with each attempt."));
    }
    return running;
  };
  const drawDownloads = async () => {
    let files = [];
    try { files = await api("GET", `${base}/outputs/score`); } catch (e) { files = []; }
    downloads.replaceChildren(files.length
      ? table(["File", "Size"], files.map((f) => [h("a", { href: `${base}/outputs/score/${f.path.split("/").map(enc).join("/")}`,
        download: f.path.split("/").pop(), class: "download" }, f.path), `${f.size} bytes`]))
      : h("p", { class: "muted" }, "Published when the job completes."));
  };
  let running = await draw();
  await drawDownloads();
  await logViewer(logs, base, () => !TERMINAL.includes(job.status));
  if (running) {
    every(1000, async () => {
      try {
        running = await draw();
        if (!running) {
          await drawDownloads();
          state.timers.forEach(clearInterval);
          state.timers = [];
          if (state.followLog) await state.followLog();
        }
      } catch (_) { /* the next tick tries again */ }
    });
  }
}

// The job's log files, one shown at a time; while the job runs, the list and the shown file follow it.
async function logViewer(box, base, isRunning) {
  const select = h("select", { id: "log-file" });
  const pre = h("pre", { id: "log" }, "");
  box.replaceChildren(h("label", { for: "log-file" }, "File"), select, pre);
  let shown = "";
  const list = async () => {
    const files = await api("GET", `${base}/outputs/logs`).catch(() => []);
    const names = files.map((f) => f.path);
    const filled = files.filter((f) => f.size > 0).map((f) => f.path);
    if (names.join("\n") !== Array.from(select.options).map((o) => o.value).join("\n")) {
      select.replaceChildren(...names.map((n) => h("option", { value: n, selected: n === shown }, n)));
    }
    if (!shown && filled.length) {
      shown = filled.find((n) => n.includes("user/stdout")) || filled.find((n) => n.endsWith("job_result.txt")) || filled[0];
      select.value = shown;
    }
  };
  const show = async () => {
    if (!shown) return;
    const resp = await fetch(`${base}/outputs/logs/${shown.split("/").map(enc).join("/")}`, { credentials: "same-origin" });
    pre.dataset.file = shown;
    const text = resp.ok ? await resp.text() : `(${resp.status})`;
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.textContent = text;
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  };
  select.addEventListener("change", () => { shown = select.value; show(); });
  state.followLog = async () => { await list(); await show(); };
  await state.followLog();
  every(2000, () => { if (isRunning()) state.followLog().catch(() => {}); });
}

async function invokePage(view, _args, query) {
  const endpoints = await api("GET", "/api/v1/endpoints");
  view.append(h("h1", {}, "Invoke"));
  if (!endpoints.length) return view.append(h("p", { class: "muted" }, "No endpoints to invoke."));
  const endpoint = h("select", { id: "invoke-endpoint" }, endpoints.map((e) => h("option", { value: e.name }, e.name)));
  if (query.get("endpoint")) endpoint.value = query.get("endpoint");
  const deployment = h("select", { id: "invoke-deployment" });
  const fillDeployments = () => {
    const e = endpoints.find((x) => x.name === endpoint.value);
    deployment.replaceChildren(h("option", { value: "" }, `the default (${e.default_deployment || "none"})`),
      ...e.deployments.map((d) => h("option", { value: d }, d)));
  };
  endpoint.addEventListener("change", fillDeployments);
  fillDeployments();
  const path = h("input", { type: "text", id: "invoke-path", placeholder: "azureml://datastores/NAME/paths/FOLDER" });
  const files = h("input", { type: "file", id: "invoke-files", multiple: true });
  const folder = h("input", { type: "file", id: "invoke-folder", webkitdirectory: true, multiple: true });
  const field = (id, label, attrs) => [h("label", { for: id }, label), h("input", Object.assign({ id, type: "text" }, attrs || {}))];
  const level = h("select", { id: "ov-logging_level" }, ["", "debug", "info", "warning", "error", "critical"]
    .map((l) => h("option", { value: l }, l || "the deployment's")));
  const message = h("div", { id: "invoke-message" });
  const form = h("form", { class: "card", id: "invoke-form" },
    h("div", { class: "row" },
      h("div", {}, h("label", { for: "invoke-endpoint" }, "Endpoint"), endpoint,
        h("label", { for: "invoke-deployment" }, "Deployment"), deployment,
        h("label", { for: "invoke-path" }, "Input: a datastore folder"), path,
        h("label", { for: "invoke-files" }, "…or upload files"), files,
        h("label", { for: "invoke-folder" }, "…or upload a folder"), folder,
        field("invoke-output", "Output location (optional)", { placeholder: "azureml://datastores/NAME/paths/FOLDER" })),
      h("div", {}, h("p", { class: "muted" }, "Per-job overrides (empty: the deployment's)"),
        field("ov-mini_batch_size", "Mini-batch size", { inputmode: "numeric" }),
        field("ov-instance_count", "Instances", { inputmode: "numeric" }),
        field("ov-max_retries", "Retries", { inputmode: "numeric" }),
        field("ov-timeout", "Timeout (s)", { inputmode: "numeric" }),
        field("ov-error_threshold", "Error threshold", { inputmode: "numeric" }),
        h("label", { for: "ov-logging_level" }, "Logging level"), level,
        field("ov-output_file_name", "Output file name"))),
    h("button", { type: "submit", id: "invoke-submit" }, "Start job"), message);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    message.replaceChildren(h("p", { class: "muted" }, "Starting…"));
    try {
      let uri = path.value.trim();
      const chosen = Array.from(files.files).map((f) => [f, f.name])
        .concat(Array.from(folder.files).filter((f) => f.webkitRelativePath.split("/").length === 2).map((f) => [f, f.name]));
      if (chosen.length) {
        const id = crypto.randomUUID().replaceAll("-", "");
        const prefix = `LocalUpload/${id}/studio`;
        for (const [i, [file, fileName]] of chosen.entries()) {
          message.replaceChildren(h("p", { class: "muted" }, `Uploading ${i + 1} of ${chosen.length}: ${fileName}`));
          await api("PUT", `/api/v1/datastores/workspaceblobstore/files/${prefix.split("/").map(enc).join("/")}/${enc(fileName)}`, file);
        }
        uri = `azureml://datastores/workspaceblobstore/paths/${prefix}`;
      }
      if (!uri) throw new Error("Give a datastore folder or choose files to upload.");
      const overrides = {};
      for (const key of ["mini_batch_size", "instance_count", "max_retries", "timeout", "error_threshold", "logging_level", "output_file_name"]) {
        const v = document.getElementById("ov-" + key).value.trim();
        if (v) overrides[key] = v;
      }
      const body = { input: { uri, type: "uri_folder" }, overrides };
      if (deployment.value) body.deployment_name = deployment.value;
      const out = document.getElementById("invoke-output").value.trim();
      if (out) body.output_path = out;
      const job = await api("POST", `/endpoints/${enc(endpoint.value)}/jobs`, body);
      location.hash = "#/jobs/" + enc(job.name);
    } catch (e) {
      message.replaceChildren(...[errorBox(e)].flat());
    }
  });
  view.append(form);
}

async function modelsPage(view) {
  const models = await api("GET", "/api/v1/models");
  view.append(h("h1", {}, "Models"), table(["Name", "Version", "Type", "Path", "Description", "Tags", "Archived"],
    models.map((m) => [m.name, m.version, m.model_type, h("code", {}, m.path), m.description || "",
      Object.entries(m.tags || {}).map(([k, v]) => `${k}=${v}`).join(", "), m.archived ? "yes" : ""]), "No models."));
}

async function dataPage(view) {
  const data = await api("GET", "/api/v1/data");
  view.append(h("h1", {}, "Data"), table(["Name", "Version", "Type", "Path", "Description", "Created"],
    data.map((d) => [d.name, d.version, d.type, h("code", {}, d.path), d.description || "", d.created_at]), "No data assets."));
}

async function datastoresPage(view) {
  const stores = await api("GET", "/api/v1/datastores");
  view.append(h("h1", {}, "Datastores"), table(["Name", "Type", "Root", "Endpoint"],
    stores.map((d) => [d.name, d.kind, h("code", {}, d.root), d.endpoint || ""])));
}

async function tokensPage(view) {
  const tokens = await api("GET", "/api/v1/tokens");
  const role = h("select", { id: "token-role" }, ["invoker", "reader", "contributor", "owner"].map((r) => h("option", { value: r }, r)));
  const endpoint = h("input", { type: "text", id: "token-endpoint", placeholder: "all endpoints" });
  const expires = h("input", { type: "text", id: "token-expires", placeholder: "seconds; empty: never" });
  const created = h("div", { id: "token-created" });
  const form = h("form", { class: "card", id: "token-form" }, h("h2", {}, "New token"),
    h("label", { for: "token-role" }, "Role"), role, h("label", { for: "token-endpoint" }, "Endpoint scope"), endpoint,
    h("label", { for: "token-expires" }, "Expires in"), expires, h("button", { type: "submit" }, "Create"), created);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const t = await api("POST", "/api/v1/tokens", { role: role.value, endpoint: endpoint.value.trim() || null,
        expires_in_secs: expires.value.trim() ? Number(expires.value.trim()) : null });
      created.replaceChildren(h("p", {}, `Token ${t.id} created; its secret is shown once:`), h("pre", { id: "token-secret" }, t.secret));
    } catch (e) {
      created.replaceChildren(...[errorBox(e)].flat());
    }
  });
  view.append(h("h1", {}, "Tokens"), table(["Id", "Kind", "Role", "Endpoint", "Compute", "Created", "Expires", "Revoked", ""],
    tokens.map((t) => [t.id, t.kind, t.role, t.endpoint || "", t.compute || "", t.created_at, t.expires_at || "never",
      t.revoked ? "yes" : "", t.revoked ? "" : h("button", { class: "small secondary", onclick: async () => {
        await api("DELETE", `/api/v1/tokens/${enc(t.id)}`);
        render();
      } }, "Revoke")])), form);
}

async function auditPage(view, _args, query) {
  const since = h("input", { type: "text", id: "audit-since", placeholder: "2026-11-27T00:00:00Z", value: query.get("since") || "" });
  const who = h("input", { type: "text", id: "audit-principal", placeholder: "token id or role" });
  const action = h("input", { type: "text", id: "audit-action", placeholder: "POST /endpoints" });
  const outcome = h("select", { id: "audit-outcome" }, ["", "ok", "refused", "failed"].map((o) => h("option", { value: o }, o || "any outcome")));
  const list = h("div", { id: "audit-list" });
  let entries = [];
  const draw = () => {
    const w = who.value.trim(), a = action.value.trim(), o = outcome.value;
    const shown = entries.filter((e) => (!w || e.principal.includes(w)) && (!a || e.action.includes(a)) && (!o || e.outcome.startsWith(o)));
    list.replaceChildren(h("p", { class: "muted" }, `${shown.length} of ${entries.length} entries`),
      table(["Time", "Principal", "Source", "Action", "Resource", "Outcome"],
        shown.slice(-1000).reverse().map((e) => [e.time, e.principal, e.source, e.action, e.resource, e.outcome])));
  };
  const load = async () => {
    entries = await api("GET", "/api/v1/audit" + (since.value.trim() ? "?since=" + enc(since.value.trim()) : ""));
    draw();
  };
  for (const el of [who, action]) el.addEventListener("input", draw);
  outcome.addEventListener("change", draw);
  since.addEventListener("change", () => load().catch((e) => list.replaceChildren(...[errorBox(e)].flat())));
  view.append(h("h1", {}, "Audit log"), h("div", { class: "filters" },
    h("div", {}, h("label", { for: "audit-since" }, "Since"), since), h("div", {}, h("label", { for: "audit-principal" }, "Principal"), who),
    h("div", {}, h("label", { for: "audit-action" }, "Action"), action), h("div", {}, h("label", { for: "audit-outcome" }, "Outcome"), outcome)),
    list);
  await load();
}

async function diagnosePage(view) {
  const checks = await api("GET", "/api/v1/workspace/diagnose");
  const failing = checks.filter((c) => c.status === "fail").length;
  view.append(h("h1", {}, "Diagnose"),
    h("p", { class: failing ? "fail" : "ok", id: "diagnose-verdict" }, failing ? `${failing} check(s) fail` : "Every check passes"),
    table(["", "Check", "Detail", "Fix"], checks.map((c) => [h("span", { class: c.status }, c.status.toUpperCase()), c.name, c.detail, c.fix || ""])));
}

const ROUTES = {
  endpoints: endpointsPage, jobs: jobsPage, invoke: invokePage, models: modelsPage, data: dataPage,
  datastores: datastoresPage, tokens: tokensPage, audit: auditPage, diagnose: diagnosePage,
};

window.addEventListener("hashchange", render);
window.addEventListener("DOMContentLoaded", render);
