// kiln web UI: runs, run pages, comparisons, the registry and a serving monitor.
// Plain JavaScript, no dependencies; every request goes to the server that served this page.
"use strict";

const view = document.getElementById("view");
const tooltip = document.getElementById("tooltip");
const PALETTE = ["#2f5fd0", "#d9480f", "#2b8a3e", "#c2255c", "#7048e8", "#e67700", "#0b7285", "#5c940d",
  "#862e9c", "#a61e4d", "#1864ab", "#495057"];

// ---------------------------------------------------------------------------------------
// Helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

async function api(path) {
  const headers = {};
  const token = localStorage.getItem("kilnToken");
  if (token) headers.Authorization = "Bearer " + token;
  const r = await fetch(path, { headers });
  if (r.status === 401) {
    const t = prompt("This server needs its bearer token for reads:");
    if (t) { localStorage.setItem("kilnToken", t); return api(path); }
  }
  const body = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function num(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "string") return v; // NaN, inf
  if (Number.isInteger(v) && Math.abs(v) < 1e12) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(3);
  return v.toFixed(4);
}

function text(v) {
  if (v === null || v === undefined) return "";
  return typeof v === "string" ? v : JSON.stringify(v);
}

function time(ms) {
  if (!ms) return "";
  return new Date(ms).toISOString().replace("T", " ").slice(0, 19);
}

function duration(s) {
  if (s === null || s === undefined) return "";
  if (s < 60) return s.toFixed(1) + " s";
  if (s < 3600) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(2) + " h";
}

// Hours since the epoch as "MM-DD HH:00" (UTC).
function hourLabel(hours) {
  return new Date(Math.round(hours) * 3.6e6).toISOString().slice(5, 13).replace("T", " ") + ":00";
}

function badge(status) {
  return h("span", { class: "badge " + status }, status);
}

function runLink(id, label) {
  return h("a", { href: "#/run/" + id, class: "mono" }, label || id);
}

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query] = raw.split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(query || "") };
}

function go(path, params) {
  const q = params && [...params].length ? "?" + params.toString() : "";
  location.hash = "#/" + path + q;
}

function showTip(e, content) {
  tooltip.textContent = content;
  tooltip.hidden = false;
  tooltip.style.left = e.clientX + 12 + "px";
  tooltip.style.top = e.clientY + 12 + "px";
}

function hideTip() { tooltip.hidden = true; }

// Bumped on every navigation; a view whose data arrives after the user has moved on drops it.
let routeGen = 0;

function fail(e) {
  view.replaceChildren(h("p", { class: "error", role: "alert" }, String(e.message || e)));
}

// ---------------------------------------------------------------------------------------
// Charts (SVG)

function ticks(lo, hi, n) {
  if (!(hi > lo)) return [lo];
  const step0 = (hi - lo) / n;
  const mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0) || step0;
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(+t.toPrecision(12));
  return out;
}

function extent(values, log) {
  let lo = Infinity, hi = -Infinity;
  for (const v of values) {
    if (typeof v !== "number" || !isFinite(v) || (log && v <= 0)) continue;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  if (lo === Infinity) return [0, 1];
  if (lo === hi) { const d = Math.abs(lo) * 0.05 || 1; return [lo - d, hi + d]; }
  return [lo, hi];
}

// series: [{label, color, points: [[x, y], ...]}]
function lineChart(series, opts) {
  const o = Object.assign({ width: 640, height: 300, xLabel: "step", yLabel: "", log: false, xFormat: num }, opts || {});
  const m = { l: 62, r: 14, t: 12, b: 38 };
  const W = o.width, H = o.height, iw = W - m.l - m.r, ih = H - m.t - m.b;
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1]));
  const [x0, x1] = extent(xs, false);
  let [y0, y1] = extent(ys, o.log);
  const ty = o.log ? (v) => Math.log10(v) : (v) => v;
  const [ly0, ly1] = [ty(y0), ty(y1)];
  const X = (v) => m.l + ((v - x0) / (x1 - x0 || 1)) * iw;
  const Y = (v) => m.t + ih - ((ty(v) - ly0) / (ly1 - ly0 || 1)) * ih;
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": o.yLabel || "chart" });
  const yt = o.log ? ticks(ly0, ly1, 5).map((t) => Math.pow(10, t)) : ticks(y0, y1, 5);
  for (const t of yt) {
    root.append(svg("line", { class: "grid-line", x1: m.l, x2: W - m.r, y1: Y(t), y2: Y(t) }));
    root.append(svg("text", { x: m.l - 6, y: Y(t) + 4, "text-anchor": "end" }, num(t)));
  }
  for (const t of ticks(x0, x1, 6).filter((t) => !o.xInteger || Number.isInteger(t))) {
    root.append(svg("text", { x: X(t), y: H - m.b + 16, "text-anchor": "middle" }, o.xFormat(t)));
  }
  root.append(svg("g", { class: "axis" },
    svg("line", { x1: m.l, x2: W - m.r, y1: m.t + ih, y2: m.t + ih }),
    svg("line", { x1: m.l, x2: m.l, y1: m.t, y2: m.t + ih })));
  root.append(svg("text", { x: m.l + iw / 2, y: H - 4, "text-anchor": "middle" }, o.xLabel));
  if (o.yLabel) root.append(svg("text", { x: 12, y: m.t + ih / 2, transform: `rotate(-90 12 ${m.t + ih / 2})`, "text-anchor": "middle" }, o.yLabel));
  series.forEach((s, i) => {
    const color = s.color || PALETTE[i % PALETTE.length];
    let d = "", pen = false;
    for (const [x, y] of s.points) {
      if (typeof y !== "number" || !isFinite(y) || (o.log && y <= 0)) { pen = false; continue; }
      d += (pen ? "L" : "M") + X(x).toFixed(1) + " " + Y(y).toFixed(1);
      pen = true;
    }
    const path = svg("path", { class: "series", d, stroke: color, "data-label": s.label });
    path.addEventListener("mousemove", (e) => {
      const rect = root.getBoundingClientRect();
      const xv = x0 + ((e.clientX - rect.left) * (W / rect.width) - m.l) / iw * (x1 - x0);
      let best = null;
      for (const p of s.points) if (!best || Math.abs(p[0] - xv) < Math.abs(best[0] - xv)) best = p;
      if (best) showTip(e, `${s.label}: ${o.xLabel} ${o.xFormat(best[0])}, ${num(best[1])}`);
    });
    path.addEventListener("mouseleave", hideTip);
    root.append(path);
  });
  const legend = h("div", { class: "legend" },
    series.map((s, i) => h("span", { style: `--c:${s.color || PALETTE[i % PALETTE.length]}` }, s.label)));
  return h("div", { class: "chart-box" }, root, series.length > 1 ? legend : null);
}

// Parallel coordinates: axes [{key, values: number[] | string[]}], lines coloured by the last axis.
function parallelCoordinates(runs, axes) {
  const W = Math.max(640, axes.length * 150), H = 340, m = { l: 40, r: 40, t: 28, b: 20 };
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "parallel coordinates" });
  const ih = H - m.t - m.b;
  const xAt = (i) => m.l + (axes.length === 1 ? 0 : (i * (W - m.l - m.r)) / (axes.length - 1));
  const scales = axes.map((a) => {
    const numeric = a.values.every((v) => v === null || v === undefined || typeof v === "number");
    if (numeric) {
      const [lo, hi] = extent(a.values, false);
      return { numeric, lo, hi, y: (v) => (typeof v === "number" && isFinite(v) ? m.t + ih - ((v - lo) / (hi - lo || 1)) * ih : null) };
    }
    const cats = [...new Set(a.values.filter((v) => v !== null && v !== undefined).map(text))].sort();
    return { numeric, cats, y: (v) => (v === null || v === undefined ? null : m.t + ((cats.indexOf(text(v)) + 0.5) / cats.length) * ih) };
  });
  const color = scales[scales.length - 1];
  const colorOf = (v) => {
    if (!color.numeric || typeof v !== "number" || !isFinite(v)) return "#9aa3b2";
    const t = (v - color.lo) / (color.hi - color.lo || 1);
    return `hsl(${(1 - t) * 230}, 70%, 45%)`;
  };
  runs.forEach((r, ri) => {
    let d = "", pen = false;
    axes.forEach((a, i) => {
      const y = scales[i].y(a.values[ri]);
      if (y === null) { pen = false; return; }
      d += (pen ? "L" : "M") + xAt(i).toFixed(1) + " " + y.toFixed(1);
      pen = true;
    });
    const last = axes[axes.length - 1].values[ri];
    const line = svg("path", { class: "pc-line", d, stroke: colorOf(last) });
    line.addEventListener("mousemove", (e) => showTip(e, `${r.name || r.run_id}: ` + axes.map((a) => `${a.key}=${text(a.values[ri])}`).join(", ")));
    line.addEventListener("mouseleave", hideTip);
    line.addEventListener("click", () => go("run/" + r.run_id));
    root.append(line);
  });
  axes.forEach((a, i) => {
    const s = scales[i];
    root.append(svg("line", { x1: xAt(i), x2: xAt(i), y1: m.t, y2: m.t + ih, stroke: "#6b7280" }));
    root.append(svg("text", { x: xAt(i), y: 14, "text-anchor": "middle", "font-weight": "600" }, a.key));
    const labels = s.numeric ? [s.lo, s.hi].map((v) => [num(v), s.y(v)]) : s.cats.map((c) => [c, s.y(c)]);
    for (const [label, y] of labels) root.append(svg("text", { x: xAt(i) + 4, y: y + 4 }, label));
  });
  return root;
}

// ---------------------------------------------------------------------------------------
// Runs table

const selected = new Set();

async function runsView(params) {
  const gen = routeGen;
  const q = new URLSearchParams();
  for (const k of ["experiment", "status", "q", "sort", "order", "params", "metrics", "parent"]) {
    if (params.get(k)) q.set(k, params.get(k));
  }
  const page = Math.max(0, parseInt(params.get("page") || "0", 10) || 0);
  const limit = 50;
  q.set("offset", page * limit);
  q.set("limit", limit);
  const t = await api("/api/ui/runs?" + q.toString());
  const update = (changes) => {
    const p = new URLSearchParams(params);
    for (const [k, v] of Object.entries(changes)) { if (v === null || v === "") p.delete(k); else p.set(k, v); }
    if (!("page" in changes)) p.delete("page");
    go("runs", p);
  };

  const experiment = h("select", { id: "experiment", onchange: (e) => update({ experiment: e.target.value }) },
    h("option", { value: "" }, "all experiments"),
    t.experiments.map((x) => h("option", { value: x, selected: x === params.get("experiment") }, x)));
  const status = h("select", { id: "status", onchange: (e) => update({ status: e.target.value }) },
    h("option", { value: "" }, "any status"),
    ["running", "completed", "failed", "killed"].map((x) => h("option", { value: x, selected: x === params.get("status") }, x)));
  const filter = h("input", { id: "filter", type: "search", placeholder: "filter: text, or val_loss < 0.3, optimizer = adam", value: params.get("q") || "" });
  let timer = null;
  filter.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => update({ q: filter.value }), 350); });
  filter.addEventListener("keydown", (e) => { if (e.key === "Enter") { clearTimeout(timer); update({ q: filter.value }); } });

  const compareButton = h("button", { id: "compare", class: "primary", disabled: selected.size < 2,
    onclick: () => go("compare", new URLSearchParams({ runs: [...selected].join(",") })) }, `Compare selected (${selected.size})`);
  const sweepButton = params.get("parent") ? h("button", { onclick: () => go("compare", new URLSearchParams({ parent: params.get("parent") })) }, "Compare all trials") : null;

  // Column chooser.
  const chooser = h("div", { class: "columns", hidden: true, id: "column-chooser" },
    h("fieldset", {}, h("legend", {}, "params"), t.param_keys.map((k) => h("label", {},
      h("input", { type: "checkbox", value: k, checked: t.params.includes(k), "data-kind": "params" }), " " + k))),
    h("fieldset", {}, h("legend", {}, "metrics"), t.metric_keys.map((k) => h("label", {},
      h("input", { type: "checkbox", value: k, checked: t.metrics.includes(k), "data-kind": "metrics" }), " " + k))),
    h("div", {}, h("button", { onclick: () => {
      const pick = (kind) => [...chooser.querySelectorAll(`input[data-kind=${kind}]:checked`)].map((i) => i.value).join(",");
      update({ params: pick("params") || ",", metrics: pick("metrics") || "," });
    } }, "Apply")));
  const chooseButton = h("button", { onclick: () => { chooser.hidden = !chooser.hidden; } }, "Columns");

  const sort = params.get("sort") || "start";
  const order = params.get("order") || "desc";
  const header = (label, key, cls) => {
    const active = sort === key;
    return h("th", { class: "sortable " + (cls || "") + (active ? " sorted" : ""), "data-sort": key,
      onclick: () => update({ sort: key, order: active && order === "desc" ? "asc" : "desc" }) },
      label + (active ? (order === "desc" ? " ▼" : " ▲") : ""));
  };
  const head = h("tr", {}, h("th", {}, ""), header("run", "start"), header("name", "name"), h("th", {}, "experiment"),
    header("status", "status"), h("th", {}, "started (UTC)"), header("duration", "duration", "num"),
    t.params.map((k) => header(k, "param:" + k)), t.metrics.map((k) => header(k, "metric:" + k, "num")));
  const body = h("tbody", {}, t.rows.map((r) => h("tr", { class: "run-row", "data-run": r.run_id },
    h("td", {}, h("input", { type: "checkbox", checked: selected.has(r.run_id), "aria-label": "select " + r.run_id,
      onchange: (e) => { if (e.target.checked) selected.add(r.run_id); else selected.delete(r.run_id);
        compareButton.disabled = selected.size < 2; compareButton.textContent = `Compare selected (${selected.size})`; } })),
    h("td", {}, runLink(r.run_id)), h("td", {}, r.name === r.run_id ? "" : r.name), h("td", {}, r.experiment),
    h("td", {}, badge(r.status)), h("td", { class: "mono" }, time(r.start_ms)), h("td", { class: "num" }, duration(r.duration_s)),
    t.params.map((k) => h("td", { class: "mono" }, text(r.params[k]))),
    t.metrics.map((k) => h("td", { class: "num mono" }, num(r.metrics[k]))))));

  const first = t.total === 0 ? 0 : t.offset + 1;
  const last = t.offset + t.rows.length;
  const pager = h("div", { class: "pager" },
    h("button", { id: "prev", disabled: page === 0, onclick: () => update({ page: page - 1 }) }, "‹ Prev"),
    h("span", { id: "total" }, `${first}–${last} of ${t.total.toLocaleString("en")} runs`),
    h("button", { id: "next", disabled: last >= t.total, onclick: () => update({ page: page + 1 }) }, "Next ›"));

  if (gen !== routeGen) return;
  view.replaceChildren(
    h("h1", {}, params.get("parent") ? ["Trials of ", runLink(params.get("parent"))] : "Runs"),
    h("div", { class: "controls" }, experiment, status, filter, chooseButton, compareButton, sweepButton),
    chooser,
    h("div", { class: "table-wrap" }, h("table", { id: "runs-table" }, h("thead", {}, head), body)),
    t.rows.length ? pager : h("p", { class: "muted", id: "total" }, "No runs match."));
}

// ---------------------------------------------------------------------------------------
// One run

async function runView(id) {
  const gen = routeGen;
  const [detail, metrics] = await Promise.all([api("/api/runs/" + id), api("/api/runs/" + id + "/metrics")]);
  const s = detail;
  const dl = (pairs) => h("dl", { class: "kv" }, pairs.filter((p) => p[1] !== null && p[1] !== undefined && p[1] !== "")
    .flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  const env = detail.environment;
  const children = await api("/api/ui/runs?limit=1&parent=" + id);
  if (gen !== routeGen) return;
  view.replaceChildren(
    h("h1", {}, s.name !== s.run_id ? s.name + " " : "", h("span", { class: "mono muted" }, s.run_id), " ", badge(s.status)),
    h("div", { class: "grid" },
      h("div", { class: "card" }, h("h3", {}, "Run"), dl([
        ["experiment", h("a", { href: "#/runs?experiment=" + encodeURIComponent(s.experiment) }, s.experiment)],
        ["parent", s.parent_run_id ? runLink(s.parent_run_id) : null],
        ["trials", children.total ? h("a", { href: "#/runs?parent=" + id, id: "trials-link" }, `${children.total} child run(s)`) : null],
        ["started", time(s.start_ms) + " UTC"], ["ended", s.end_ms ? time(s.end_ms) + " UTC" : null],
        ["duration", s.end_ms ? duration((s.end_ms - s.start_ms) / 1000) : null], ["attempt", s.attempt],
        ["error", s.error],
        ...Object.entries(s.tags).map(([k, v]) => ["tag " + k, v])])),
      h("div", { class: "card" }, h("h3", {}, "Params"), Object.keys(detail.params).length
        ? dl(Object.entries(detail.params).map(([k, v]) => [k, h("span", { class: "mono" }, text(v))])) : h("p", { class: "muted" }, "none")),
      env ? h("div", { class: "card" }, h("h3", {}, "Environment"), dl([
        ["git", env.git_commit ? env.git_commit.slice(0, 12) + (env.git_dirty ? " (uncommitted changes)" : "") + (env.git_branch ? " on " + env.git_branch : "") : null],
        ["host", `${env.hostname} (${env.cpu_count} CPUs, ${env.platform})`],
        ["GPUs", env.gpus && env.gpus.length ? env.gpus.map((g) => g.name).join(", ") : null],
        ["kiln", env.kiln_version], ["rustc", env.rustc_version], ["user", env.user],
        ["command", env.command && env.command.length ? h("span", { class: "mono" }, env.command.join(" ")) : null],
        ["Slurm job", env.variables && env.variables.SLURM_JOB_ID]])) : null,
      detail.inputs.length ? h("div", { class: "card" }, h("h3", {}, "Datasets"), dl(detail.inputs.map((d) =>
        [d.name + (d.context ? ` (${d.context})` : ""), h("span", { class: "mono" }, `${d.digest.slice(0, 16)} ${d.rows !== null ? d.rows + " rows " : ""}${d.source}`)]))) : null,
      detail.artifacts.length ? h("div", { class: "card" }, h("h3", {}, "Artifacts"), h("table", {}, h("tbody", {}, detail.artifacts.map((a) =>
        h("tr", {}, h("td", {}, a.kind === "file" ? h("a", { href: `/api/runs/${id}/artifacts/` + a.name.split("/").map(encodeURIComponent).join("/"), download: a.name.split("/").pop() }, a.name) : a.name),
          h("td", { class: "num" }, a.size.toLocaleString("en") + " B"), h("td", { class: "num" }, a.files.length + " file(s)")))))) : null),
    h("h2", {}, "Metrics"),
    metrics.length ? h("div", { class: "grid", id: "charts" }) : h("p", { class: "muted" }, "No metrics logged."));
  const charts = document.getElementById("charts");
  if (!charts) return;
  // Curves for metrics with more than one point; a table of the rest.
  const curves = metrics.filter((m) => m.points > 1);
  const single = metrics.filter((m) => m.points <= 1);
  for (const m of curves) {
    const card = h("div", { class: "card metric-chart", "data-metric": m.key }, h("h3", {}, m.key,
      h("span", { class: "muted" }, ` last ${num(m.last)}, min ${num(m.min)}, max ${num(m.max)}`)));
    charts.append(card);
    api(`/api/runs/${id}/metrics/history?key=${encodeURIComponent(m.key)}&max_points=600`).then((hist) => {
      card.append(lineChart([{ label: m.key, points: hist.points.map((p) => [p.step, p.value]) }], { yLabel: m.key }));
      if (hist.downsampled) card.append(h("p", { class: "muted" }, `${hist.points.length} of ${hist.total_points} points shown (extremes kept)`));
    }).catch((e) => card.append(h("p", { class: "error" }, e.message)));
  }
  if (single.length) {
    charts.append(h("div", { class: "card" }, h("h3", {}, "Final values"), h("table", {}, h("tbody", {},
      single.map((m) => h("tr", {}, h("td", {}, m.key), h("td", { class: "num mono" }, num(m.last))))))));
  }
}

// ---------------------------------------------------------------------------------------
// Compare

async function compareView(params) {
  const gen = routeGen;
  const q = new URLSearchParams();
  for (const k of ["runs", "parent", "experiment"]) if (params.get(k)) q.set(k, params.get(k));
  const c = await api("/api/ui/compare?" + q.toString());
  if (!c.runs.length) { if (gen !== routeGen) return; view.replaceChildren(h("h1", {}, "Compare"), h("p", { class: "muted" }, "No runs to compare.")); return; }
  const metric = params.get("metric") || c.metric_keys.find((k) => /val_loss|loss/.test(k)) || c.metric_keys[0];
  const varying = c.param_keys.filter((k) => new Set(c.runs.map((r) => text(r.params[k]))).size > 1);
  const select = h("select", { id: "metric", onchange: (e) => { const p = new URLSearchParams(params); p.set("metric", e.target.value); go("compare", p); } },
    c.metric_keys.map((k) => h("option", { value: k, selected: k === metric }, k)));
  const curveBox = h("div", { class: "card", id: "curves" }, h("h3", {}, "Curves: " + (metric || "")));
  const pcBox = h("div", { class: "card", id: "parallel" }, h("h3", {}, "Parallel coordinates (final " + metric + ")"));
  const label = (r) => (r.name && r.name !== r.run_id ? r.name : r.run_id.slice(-8));
  const table = h("table", { id: "compare-table" },
    h("thead", {}, h("tr", {}, h("th", {}, ""), c.runs.map((r) => h("th", {}, runLink(r.run_id, label(r)))))),
    h("tbody", {},
      h("tr", {}, h("td", {}, "status"), c.runs.map((r) => h("td", {}, badge(r.status)))),
      (varying.length ? varying : c.param_keys).map((k) => h("tr", {}, h("td", {}, k), c.runs.map((r) => h("td", { class: "mono" }, text(r.params[k]))))),
      c.metric_keys.map((k) => h("tr", {}, h("td", {}, k), c.runs.map((r) => h("td", { class: "num mono" }, num(r.metrics[k])))))));
  if (gen !== routeGen) return;
  view.replaceChildren(h("h1", {}, `Compare ${c.runs.length} runs`), h("div", { class: "controls" }, "metric ", select),
    h("div", { class: "grid" }, curveBox, pcBox), h("h2", {}, varying.length ? "Params that differ, and metrics" : "Params and metrics"),
    h("div", { class: "table-wrap" }, table));
  if (metric) {
    const shown = c.runs.slice(0, 40);
    const series = await Promise.all(shown.map((r, i) =>
      api(`/api/runs/${r.run_id}/metrics/history?key=${encodeURIComponent(metric)}&max_points=300`)
        .then((hist) => ({ label: label(r), color: PALETTE[i % PALETTE.length], points: hist.points.map((p) => [p.step, p.value]) }))
        .catch(() => null)));
    const drawn = series.filter(Boolean);
    curveBox.append(drawn.length ? lineChart(drawn, { yLabel: metric }) : h("p", { class: "muted" }, "No curves for " + metric));
    if (c.runs.length > shown.length) curveBox.append(h("p", { class: "muted" }, `first ${shown.length} of ${c.runs.length} runs`));
  }
  const axes = varying.map((k) => ({ key: k, values: c.runs.map((r) => r.params[k] ?? null) }));
  if (metric) axes.push({ key: metric, values: c.runs.map((r) => (typeof r.metrics[metric] === "number" ? r.metrics[metric] : null)) });
  pcBox.append(axes.length >= 2 ? parallelCoordinates(c.runs, axes) : h("p", { class: "muted" }, "Needs params that differ between the runs."));
}

// ---------------------------------------------------------------------------------------
// Registry

async function modelsView() {
  const gen = routeGen;
  const models = await api("/api/models");
  if (gen !== routeGen) return;
  view.replaceChildren(h("h1", {}, "Models"), models.length ? h("table", { id: "models-table" },
    h("thead", {}, h("tr", {}, ["model", "versions", "latest", "aliases"].map((c) => h("th", {}, c)))),
    h("tbody", {}, models.map((m) => h("tr", {}, h("td", {}, h("a", { href: "#/model/" + encodeURIComponent(m.name) }, m.name)),
      h("td", { class: "num" }, m.versions), h("td", { class: "num" }, m.latest ? "v" + m.latest : ""),
      h("td", {}, Object.entries(m.aliases).map(([a, v]) => h("span", { class: "badge" }, `${a} → v${v}`))))))) : h("p", { class: "muted" }, "No registered models."));
}

async function modelView(name) {
  const gen = routeGen;
  const m = await api("/api/models/" + encodeURIComponent(name));
  const aliasesOf = (v) => Object.entries(m.aliases).filter(([, n]) => n === v).map(([a]) => h("span", { class: "badge" }, a));
  const metricKeys = [...new Set(m.versions.flatMap((v) => Object.keys(v.metrics)))].sort();
  if (gen !== routeGen) return;
  view.replaceChildren(
    h("h1", {}, name, " ", h("a", { href: "#/serving/" + encodeURIComponent(name), class: "badge" }, "serving monitor")),
    h("h2", {}, "Versions"),
    h("div", { class: "table-wrap" }, h("table", { id: "versions-table" },
      h("thead", {}, h("tr", {}, ["version", "aliases", "registered (UTC)", "by", "run", "git", "datasets"].map((c) => h("th", {}, c)),
        metricKeys.map((k) => h("th", { class: "num" }, k)))),
      h("tbody", {}, [...m.versions].reverse().map((v) => h("tr", {},
        h("td", {}, "v" + v.version), h("td", {}, aliasesOf(v.version)), h("td", { class: "mono" }, time(v.created_ms)),
        h("td", {}, v.created_by), h("td", {}, v.lineage.run_id ? runLink(v.lineage.run_id, v.lineage.run_id.slice(-8)) : ""),
        h("td", { class: "mono" }, v.lineage.git_commit ? v.lineage.git_commit.slice(0, 10) : ""),
        h("td", { class: "mono" }, v.lineage.dataset_digests.map((d) => d.slice(0, 10)).join(" ")),
        metricKeys.map((k) => h("td", { class: "num mono" }, num(v.metrics[k])))))))),
    h("h2", {}, "History"),
    h("table", { id: "history-table" }, h("tbody", {}, [...m.history].reverse().map((e) => h("tr", {},
      h("td", { class: "mono" }, time(e.at_ms)), h("td", {}, e.event.replace("_", " ")),
      h("td", {}, e.alias ? e.alias + ": " : "", e.from_version ? `v${e.from_version} → ` : "", e.version ? "v" + e.version : ""),
      h("td", {}, e.actor), h("td", { class: "muted" }, e.reason || ""))))));
}

// ---------------------------------------------------------------------------------------
// Serving monitor

async function servingView(name) {
  const gen = routeGen;
  const s = await api("/api/ui/serving/" + encodeURIComponent(name));
  const total = Object.values(s.labels).reduce((a, b) => a + b, 0);
  const hours = s.hours;
  if (gen !== routeGen) return;
  view.replaceChildren(
    h("h1", {}, "Serving: ", h("a", { href: "#/model/" + encodeURIComponent(name) }, name)),
    s.versions.length ? h("table", { id: "serving-table" },
      h("thead", {}, h("tr", {}, ["version", "role", "predictions", "mean latency", "p99 latency", "labels back", "online accuracy"].map((c) => h("th", {}, c)))),
      h("tbody", {}, s.versions.map((v) => h("tr", {}, h("td", {}, v.version), h("td", {}, v.role),
        h("td", { class: "num" }, v.predictions.toLocaleString("en")), h("td", { class: "num" }, v.mean_latency_ms.toFixed(2) + " ms"),
        h("td", { class: "num" }, v.p99_latency_ms.toFixed(2) + " ms"), h("td", { class: "num" }, v.feedback.toLocaleString("en")),
        h("td", { class: "num" }, v.accuracy === null ? "" : num(v.accuracy))))))
      : h("p", { class: "muted" }, "No predictions logged for this model yet (kiln serve logs them to the store)."),
    hours.length > 1 ? h("div", { class: "grid" },
      h("div", { class: "card" }, h("h3", {}, "Predictions per hour"), lineChart([{ label: "predictions", points: hours.map((x) => [x.hour_ms / 3.6e6, x.predictions]) }], { xLabel: "hour (UTC)", yLabel: "predictions", xFormat: hourLabel, xInteger: true })),
      h("div", { class: "card" }, h("h3", {}, "Online accuracy per hour"), lineChart([{ label: "accuracy", points: hours.filter((x) => x.accuracy !== null).map((x) => [x.hour_ms / 3.6e6, x.accuracy]) }], { xLabel: "hour (UTC)", yLabel: "accuracy", xFormat: hourLabel, xInteger: true }))) : null,
    s.drift ? driftSection(s.drift) : null,
    total ? h("div", { class: "card" }, h("h3", {}, "Predicted labels"), h("table", {}, h("tbody", {}, Object.entries(s.labels).map(([l, n]) =>
      h("tr", {}, h("td", {}, l), h("td", { class: "num" }, n.toLocaleString("en")), h("td", {}, h("span", { class: "bar", style: `width:${(200 * n) / total}px` }))))))) : null);
}

// Reference (training profile) and current (logged inputs) shares per bin, side by side.
function driftChart(f) {
  const W = 320, H = 170, m = { l: 36, r: 8, t: 8, b: 34 };
  const iw = W - m.l - m.r, ih = H - m.t - m.b;
  const share = (counts) => { const t = counts.reduce((a, b) => a + b, 0) || 1; return counts.map((c) => c / t); };
  const ref = share(f.reference), cur = share(f.current);
  const top = Math.max(...ref, ...cur, 1e-9);
  const bw = iw / f.bins.length;
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "drift of " + f.feature });
  for (const t of ticks(0, top, 3)) {
    const y = m.t + ih - (t / top) * ih;
    root.append(svg("line", { class: "grid-line", x1: m.l, x2: W - m.r, y1: y, y2: y }));
    root.append(svg("text", { x: m.l - 4, y: y + 4, "text-anchor": "end" }, Math.round(t * 100) + "%"));
  }
  f.bins.forEach((label, i) => {
    const x = m.l + i * bw;
    for (const [k, v, cls] of [[0, ref[i], "ref"], [1, cur[i], "cur"]]) {
      const hgt = (v / top) * ih;
      const bar = svg("rect", { class: "drift-bar " + cls, x: x + bw * (0.1 + 0.4 * k), y: m.t + ih - hgt, width: bw * 0.4, height: Math.max(hgt, 0) });
      bar.addEventListener("mousemove", (e) => showTip(e, `${f.feature} ${label}: training ${(ref[i] * 100).toFixed(1)}%, now ${(cur[i] * 100).toFixed(1)}%`));
      bar.addEventListener("mouseleave", hideTip);
      root.append(bar);
    }
  });
  const every = Math.ceil(f.bins.length / 4);
  f.bins.forEach((label, i) => {
    if (i % every === 0 || f.kind === "categorical") {
      root.append(svg("text", { x: m.l + (i + 0.5) * bw, y: H - m.b + 14, "text-anchor": "middle" }, f.kind === "numeric" ? label.split("–")[0] : label.slice(0, 10)));
    }
  });
  root.append(svg("g", { class: "axis" }, svg("line", { x1: m.l, x2: W - m.r, y1: m.t + ih, y2: m.t + ih })));
  const drifted = typeof f.psi === "number" && f.psi > 0.25;
  const notes = [f.outside ? `${f.outside} outside the training range` : null, f.missing ? `${f.missing} missing` : null].filter(Boolean).join(", ");
  return h("div", { class: "card drift-chart" + (drifted ? " drifted" : ""), "data-feature": f.feature, "data-psi": f.psi },
    h("h3", {}, f.feature, " ", h("span", { class: "muted" }, "PSI " + num(f.psi)), drifted ? [" ", h("span", { class: "badge failed" }, "shifted")] : null),
    root, notes ? h("p", { class: "muted" }, notes) : null);
}

function driftSection(d) {
  return h("div", { id: "drift" },
    h("h2", {}, `Input drift of version ${d.version}`),
    h("p", { class: "muted" }, `The latest ${d.rows.toLocaleString("en")} logged inputs (blue) against the training data's profile (grey), most shifted first.`),
    d.note ? h("p", { class: "muted", id: "drift-note" }, d.note) : null,
    h("div", { class: "grid" }, d.features.map(driftChart)),
    h("div", { class: "legend" }, h("span", { style: "--c:#9aa3b2" }, "training"), h("span", { style: "--c:#2f5fd0" }, "logged inputs")));
}

// ---------------------------------------------------------------------------------------
// Routing

async function route() {
  const { parts, params } = parseHash();
  const section = parts[0] || "runs";
  for (const a of document.querySelectorAll("header nav a")) {
    a.classList.toggle("active", a.dataset.nav === section || (section === "run" && a.dataset.nav === "runs") || (section === "model" && a.dataset.nav === "models"));
  }
  hideTip();
  const gen = ++routeGen;
  try {
    if (section === "runs") await runsView(params);
    else if (section === "run" && parts[1]) await runView(parts[1]);
    else if (section === "compare") await compareView(params);
    else if (section === "models") await modelsView();
    else if (section === "model" && parts[1]) await modelView(parts[1]);
    else if (section === "serving" && parts[1]) await servingView(parts[1]);
    else go("runs");
    if (gen === routeGen) document.body.dataset.view = section;
  } catch (e) {
    if (gen === routeGen) fail(e);
  }
}

window.addEventListener("hashchange", route);
api("/api/health").then((hl) => {
  document.getElementById("store-info").textContent = `kiln ${hl.version} · store format ${hl.format_version}`;
}).catch(() => {});
route();
