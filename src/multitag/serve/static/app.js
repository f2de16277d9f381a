// multitag explorer: the catalogue map (plotly.js scattergl), hover thumbnails, colour by
// task/topic/cluster, tag filter, click -> similar items, upload -> tags + neighbours, and a
// switch between the maps the catalogue holds (e.g. of the embedding, of the topic weights).
// Catalogues too large for one response come as a sample of the view on a density layer:
// panning or zooming fetches the points of the new view (/map?x0=..&x1=..&y0=..&y1=..), on the
// map drawn (&layout=..); switching maps fetches the new map's whole view.
"use strict";

const MAX_LEGEND = 24; // categories beyond this are drawn together as "other"
const state = {
  key: "",  // kept in memory only; thumbnails authenticate with the session cookie
  map: null, colour: "topic", match: null, highlight: [], query: null, details: new Map(),
  tag: "", box: null, viewTimer: null, views: 0,
  layout: null,  // which of map.layouts is drawn; an upload's star belongs to the first one
};
const $ = (id) => document.getElementById(id);
const status = (text) => { $("status").textContent = text; };

async function api(path, options = {}, retry = true) {
  const headers = Object.assign({}, options.headers || {});
  if (state.key) headers["X-API-Key"] = state.key;
  const resp = await fetch(path, Object.assign({}, options, { headers }));
  if (resp.status === 401 && retry) {
    const key = prompt("This catalogue needs an API key:");
    if (key) { state.key = key; await openSession(key); return api(path, options, false); }
  }
  if (!resp.ok) {
    let detail = resp.statusText;
    try { detail = (await resp.json()).detail; } catch (e) { /* not JSON */ }
    throw new Error(`${resp.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  return resp.json();
}

// The key goes in a header, never in a URL: POST /session trades it for an HttpOnly same-site
// cookie, which the <img> thumbnail requests carry.
async function openSession(key) {
  await fetch("/session", { method: "POST", headers: { "X-API-Key": key }, credentials: "same-origin" });
}

function thumbUrl(id) {
  return "/thumbs/" + encodeURIComponent(id);
}

function traces() {
  const m = state.map, field = m.colour_by[state.colour];
  const keep = state.match ? new Set(state.match) : null;
  const shown = field.categories.slice(0, MAX_LEGEND);
  const groups = shown.map(() => []);
  const other = [], hidden = [];
  for (let i = 0; i < m.ids.length; i++) {
    if (keep && !keep.has(i)) { hidden.push(i); continue; }
    const code = field.codes[i];
    (code < MAX_LEGEND ? groups[code] : other).push(i);
  }
  const make = (rows, name) => ({
    type: "scattergl", mode: "markers", name: `${name} (${rows.length})`,
    x: rows.map((i) => m.x[i]), y: rows.map((i) => m.y[i]), customdata: rows,
    text: rows.map((i) => m.ids[i]), hovertemplate: "%{text}<extra>" + name + "</extra>",
    marker: { size: 5, opacity: 0.75 },
  });
  const out = [];
  const d = m.density;
  if (d) {  // every point of the view, counted on a grid, under the sample drawn on top
    const [x0, x1, y0, y1] = d.box, ny = d.counts.length, nx = d.counts[0].length;
    out.push({
      type: "heatmap", name: `density (${m.total} in view)`, hoverinfo: "skip", showscale: false,
      x: Array.from({ length: nx }, (_, j) => x0 + (j + 0.5) * (x1 - x0) / nx),
      y: Array.from({ length: ny }, (_, i) => y0 + (i + 0.5) * (y1 - y0) / ny),
      z: d.counts.map((row) => row.map((c) => (c > 0 ? Math.log1p(c) : null))),
      colorscale: [[0, "rgba(99,102,241,0.08)"], [1, "rgba(30,27,75,0.55)"]],
    });
  }
  if (hidden.length) {  // filtered out: kept as faint context, not hoverable
    out.push({
      type: "scattergl", mode: "markers", name: `not matching (${hidden.length})`, hoverinfo: "skip",
      x: hidden.map((i) => m.x[i]), y: hidden.map((i) => m.y[i]),
      marker: { size: 4, color: "rgba(160,160,160,0.25)" },
    });
  }
  out.push(...groups.map((rows, c) => make(rows, shown[c])).filter((t) => t.x.length));
  if (other.length) out.push(make(other, "other"));
  const hl = state.highlight;
  out.push({
    type: "scattergl", mode: "markers", name: "similar", customdata: hl,
    x: hl.map((i) => m.x[i]), y: hl.map((i) => m.y[i]), text: hl.map((i) => m.ids[i]),
    hovertemplate: "%{text}<extra>similar</extra>",
    marker: { size: 13, color: "rgba(0,0,0,0)", line: { color: "#e11d48", width: 2.5 } },
  });
  const q = state.query;
  out.push({
    type: "scattergl", mode: "markers", name: "your photo", x: q ? [q[0]] : [], y: q ? [q[1]] : [],
    hoverinfo: "skip", marker: { size: 20, symbol: "star", color: "#facc15", line: { color: "#111", width: 1.5 } },
  });
  return out;
}

const layout = () => ({
  margin: { l: 10, r: 10, t: 10, b: 10 }, dragmode: "pan", hovermode: "closest",
  uirevision: "map:" + (state.layout || ""),  // switching maps starts from the whole map
  xaxis: { visible: false }, yaxis: { visible: false, scaleanchor: "x" },
  legend: { itemsizing: "constant", font: { size: 11 }, y: 0.94 }, paper_bgcolor: "#fafafa", plot_bgcolor: "#fafafa",
});

async function draw() {
  const t0 = performance.now();
  await Plotly.react("map", traces(), layout(), { scrollZoom: true, displaylogo: false, responsive: true });
  window.__lastDrawMs = performance.now() - t0;
}

function renderTags(list, tags) {
  list.innerHTML = "";
  for (const [task, top] of Object.entries(tags)) {
    const li = document.createElement("li");
    const b = document.createElement("b"); b.textContent = task;
    li.append(b, top.map((t) => `${t.label} ${(t.prob * 100).toFixed(0)}%`).join(", "));
    list.append(li);
  }
}

async function onHover(ev) {
  const pt = ev.points && ev.points[0];
  if (!pt || pt.customdata === undefined) return;
  const id = state.map.ids[pt.customdata];
  $("hover-panel").querySelector("h2").textContent = "item";
  $("hover-id").textContent = id;
  const img = $("hover-thumb");
  img.hidden = false; img.src = thumbUrl(id); img.alt = "thumbnail of " + id;
  window.__lastHover = { id, t: performance.now() };
  try {
    if (!state.details.has(id)) state.details.set(id, await api("/items/" + encodeURIComponent(id)));
    if ($("hover-id").textContent !== id) return;
    const d = state.details.get(id);
    const imagenet = (d.imagenet_prob || []).map((p, j) => ({ label: d.imagenet[j], prob: p }));
    renderTags($("hover-tags"), Object.assign({}, d.tags, imagenet.length ? { imagenet } : {},
      { topic: [{ label: d.topic_name, prob: d.topic_weight }] }));
  } catch (e) { status(e.message); }
}

function showSimilar(title, items) {
  $("similar-panel").hidden = false;
  $("similar-title").textContent = title;
  const grid = $("similar-list");
  grid.innerHTML = "";
  for (const it of items) {
    const fig = document.createElement("figure");
    fig.className = "similar-item"; fig.dataset.id = it.id;
    const img = document.createElement("img"); img.src = thumbUrl(it.id); img.alt = it.id; img.loading = "lazy";
    const cap = document.createElement("figcaption"); cap.textContent = `${it.id} · ${it.score.toFixed(2)}`;
    fig.append(img, cap);
    fig.addEventListener("click", () => similarTo(it.id));
    grid.append(fig);
  }
  const rows = new Map(state.map.ids.map((id, i) => [id, i]));
  state.highlight = items.map((it) => rows.get(it.id)).filter((i) => i !== undefined);
}

async function similarTo(id) {
  status("finding items similar to " + id + " ...");
  const form = new FormData(); form.append("id", id); form.append("k", "12");
  try {
    const res = await api("/similar", { method: "POST", body: form });
    showSimilar("similar to " + id, res.items);
    await draw();
    status("");
  } catch (e) { status(e.message); }
}

async function onUpload(ev) {
  const file = ev.target.files[0];
  if (!file) return;
  status("tagging " + file.name + " ...");
  const form = new FormData(); form.append("file", file); form.append("k", "12");
  try {
    const res = await api("/similar", { method: "POST", body: form });
    $("upload-panel").hidden = false;
    $("upload-thumb").src = URL.createObjectURL(file);
    const imagenet = res.query_tags.imagenet;
    renderTags($("upload-tags"), Object.assign({}, res.query_tags.tags, imagenet.length ? { imagenet } : {}));
    state.uploadXy = res.query_xy;
    state.query = state.layout === firstLayout() ? res.query_xy : null;
    showSimilar("neighbours of your photo", res.items);
    await draw();
    status("");
  } catch (e) { status(e.message); }
}

// large catalogues: the points of the current view (and tag filter) come from the server
function viewQuery() {
  const p = new URLSearchParams();
  if (state.box) ["x0", "x1", "y0", "y1"].forEach((k, i) => p.set(k, String(state.box[i])));
  if (state.tag) p.set("tag", state.tag);
  if (state.layout && state.layout !== firstLayout()) p.set("layout", state.layout);
  const q = p.toString();
  return "/map" + (q ? "?" + q : "");
}

async function loadView() {
  const m = await api(viewQuery());
  m.n_items = m.n_items || m.ids.length;
  state.layouts = state.layouts || Object.keys(m.layouts || {});
  state.map = m; state.views += 1;
  await draw();
  window.__viewsLoaded = state.views;
  status(m.sampled ? `showing ${m.ids.length} of ${m.total} item(s) in view (${m.n_items} in all)`
    : `${m.total} item(s) in view`);
}

function onRelayout(ev) {
  if (!state.large) return;
  const x0 = ev["xaxis.range[0]"], x1 = ev["xaxis.range[1]"];
  const y0 = ev["yaxis.range[0]"], y1 = ev["yaxis.range[1]"];
  if (ev["xaxis.autorange"] || ev["yaxis.autorange"]) state.box = null;
  else if ([x0, x1, y0, y1].every((v) => v !== undefined)) state.box = [x0, x1, y0, y1];
  else return;
  clearTimeout(state.viewTimer);
  state.viewTimer = setTimeout(() => loadView().catch((e) => status(e.message)), 250);
}

async function applyFilter() {
  const tag = $("tag-filter").value.trim();
  if (state.large) {  // filter on the server, then show the view's matching points
    state.tag = tag;
    try { await loadView(); } catch (e) { status(e.message); }
    return;
  }
  if (!tag) { state.match = null; await draw(); status(""); return; }
  try {
    const res = await api("/match?tag=" + encodeURIComponent(tag));
    state.match = res.rows;
    status(`${res.total} item(s) tagged ${tag}`);
    await draw();
  } catch (e) { status(e.message); }
}

// page coordinates of a map row (used by tests and the benchmark to hover a point)
function pointPixel(row) {
  const gd = $("map"), fl = gd._fullLayout, box = gd.getBoundingClientRect();
  return {
    x: box.left + fl.margin.l + fl.xaxis.l2p(state.map.x[row]),
    y: box.top + fl.margin.t + fl.yaxis.l2p(state.map.y[row]),
  };
}

function firstLayout() {
  return (state.layouts || Object.keys(state.map.layouts || {}))[0] || null;
}

// switch the drawn map: the points keep their colours, filter and rings. A sampled (large)
// catalogue's view box belongs to the map it was drawn on: the new map's whole view is fetched.
function setLayout(name) {
  state.query = name === firstLayout() ? state.uploadXy || null : null;
  state.layout = name;
  if (state.large) {
    state.box = null;
    clearTimeout(state.viewTimer);
    return loadView();
  }
  const xy = state.map.layouts[name];
  state.map.x = xy.x; state.map.y = xy.y;
  return draw();
}

async function main() {
  const t0 = performance.now();
  status("loading the catalogue ...");
  state.map = await api("/map");
  state.large = state.map.sampled;  // the server sent a sample: fetch points per view
  const select = $("colour-by");
  for (const name of Object.keys(state.map.colour_by)) select.add(new Option(name, name));
  select.value = state.colour;
  select.addEventListener("change", () => { state.colour = select.value; draw(); });
  const layouts = Object.keys(state.map.layouts || {});
  state.layouts = layouts;
  state.layout = state.map.layout || firstLayout();
  if (layouts.length > 1) {
    const pick = $("layout-by");
    for (const name of layouts) pick.add(new Option(name, name));
    pick.value = state.layout;
    pick.addEventListener("change", () => setLayout(pick.value));
    $("layout-label").hidden = false;
  }
  const tagList = $("tag-list");
  for (const t of state.map.tags) tagList.append(new Option(t));
  $("tag-filter").addEventListener("change", applyFilter);
  $("clear-filter").addEventListener("click", () => { $("tag-filter").value = ""; applyFilter(); });
  $("upload").addEventListener("change", onUpload);
  await draw();
  const gd = $("map");
  gd.on("plotly_hover", onHover);
  gd.on("plotly_relayout", onRelayout);
  gd.on("plotly_click", (ev) => {
    const pt = ev.points && ev.points[0];
    if (pt && pt.customdata !== undefined) similarTo(state.map.ids[pt.customdata]);
  });
  window.__firstPaintMs = performance.now() - t0;
  window.__ready = true;
  status(state.large ? `showing ${state.map.ids.length} of ${state.map.n_items} items: zoom in for more`
    : `${state.map.ids.length} items`);
}

window.explorer = { state, pointPixel, similarTo, draw, loadView, setLayout };
main().catch((e) => status(e.message));
