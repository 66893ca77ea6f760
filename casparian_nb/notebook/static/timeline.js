// Tape timeline for casparian_nb (anywidget ES module; no build step, no dependencies).
//
// Draws what the kernel sends in `data` (lanes, bars, markers; times in seconds from the
// tape's start) as SVG. Zoom (wheel, +/−) and pan (drag) are local. The scrubber asks the
// kernel to replay the tape up to a moment (`{type: "scrub"}`); the kernel answers with
// `state`, the queue as the sentinel had it then. Clicking a marker asks for that event's
// payload (`{type: "payload"}`), which comes back as a custom message.

const SVGNS = "http://www.w3.org/2000/svg";
const LANE_H = 20;
const TOP = 22; // the session row: commands and markers without a lane
const LABEL_W = 110;

export const STATUS_CLASS = {
  completed: "cf-t-completed", failed: "cf-t-failed", aborted: "cf-t-aborted",
  skipped: "cf-t-skipped", queued: "cf-t-queued", running: "cf-t-running",
  dispatched: "cf-t-running", requeued: "cf-t-requeued", failed_retrying: "cf-t-requeued",
};

export const MARKER_GLYPH = {
  command: "▼", cancel: "✕", retry: "↻", error: "●", worker_joined: "+", worker_left: "−",
  worker_lost: "!",
};

/** x pixel of time t in a view {t0, t1} drawn `width` pixels wide. */
export function scaleX(t, view, width) {
  const span = Math.max(1e-9, view.t1 - view.t0);
  return ((t - view.t0) / span) * width;
}

/** The view zoomed by `factor` (< 1 zooms in) around time `anchor`, kept inside [0, full]. */
export function zoomView(view, factor, anchor, full) {
  const span = Math.min(full, Math.max(full / 1e5, (view.t1 - view.t0) * factor, 1e-6));
  const ratio = (anchor - view.t0) / Math.max(1e-9, view.t1 - view.t0);
  let t0 = anchor - ratio * span;
  t0 = Math.min(Math.max(0, t0), Math.max(0, full - span));
  return { t0, t1: t0 + span };
}

/** The view moved by `dt` seconds, kept inside [0, full]. */
export function panView(view, dt, full) {
  const span = view.t1 - view.t0;
  const t0 = Math.min(Math.max(0, view.t0 + dt), Math.max(0, full - span));
  return { t0, t1: t0 + span };
}

/** Bars overlapping the view (open bars run to `full`). */
export function visibleBars(bars, view, full) {
  return bars.filter((b) => b.t0 <= view.t1 && (b.t1 ?? full) >= view.t0);
}

/** "1.25 s", "3 min 02 s" for an axis or a tooltip. */
export function formatSeconds(s) {
  if (s === null || s === undefined) return "";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${String(Math.floor(s % 60)).padStart(2, "0")} s`;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c ?? ""));
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) node.setAttribute(k, v);
  return node;
}

function render({ model, el: root }) {
  root.classList.add("cf-timeline");
  const data = () => model.get("data") || { lanes: [], bars: [], markers: [], duration_s: 0 };
  const full = () => Math.max(1e-3, data().duration_s || 0);
  let view = { t0: 0, t1: full() };
  let width = 800;

  const title = el("span", { class: "cf-t-title" });
  const info = el("span", { class: "cf-t-info" });
  const zoomIn = el("button", { title: "zoom in" }, "+");
  const zoomOut = el("button", { title: "zoom out" }, "−");
  const reset = el("button", { title: "show the whole tape" }, "fit");
  const reload = el("button", { title: "re-read the tape (a live session tape grows)" }, "reload");
  const labels = el("div", { class: "cf-t-labels" });
  const chart = svg("svg", { class: "cf-t-svg" });
  const plot = el("div", { class: "cf-t-plot" }, chart);
  const body = el("div", { class: "cf-t-body" }, labels, plot);
  const prev = el("button", { title: "previous event" }, "◀");
  const next = el("button", { title: "next event" }, "▶");
  const slider = el("input", { type: "range", min: "0", max: "1000", step: "1", class: "cf-t-slider" });
  const where = el("span", { class: "cf-t-where" });
  const statePanel = el("div", { class: "cf-t-state" });
  const detail = el("div", { class: "cf-t-detail" }, el("div", { class: "cf-t-hint" }, "click a marker or bar for details"));
  const tip = el("div", { class: "cf-t-tip" });
  root.append(
    el("div", { class: "cf-t-head" }, title, info, el("span", { class: "cf-t-spacer" }), zoomIn, zoomOut, reset, reload),
    body,
    el("div", { class: "cf-t-scrub" }, prev, slider, next, where),
    el("div", { class: "cf-t-panels" }, statePanel, detail),
    tip,
  );

  function draw() {
    const d = data();
    width = Math.max(200, plot.clientWidth || 800);
    const height = TOP + d.lanes.length * LANE_H + 4;
    chart.setAttribute("width", width);
    chart.setAttribute("height", height);
    chart.replaceChildren();
    labels.replaceChildren(el("div", { class: "cf-t-lane-label", style: `height:${TOP}px` }, "session"));
    d.lanes.forEach((name, i) => {
      labels.append(el("div", { class: "cf-t-lane-label", style: `height:${LANE_H}px`, title: name }, name));
      chart.append(svg("rect", { x: 0, y: TOP + i * LANE_H, width, height: LANE_H, class: i % 2 ? "cf-t-lane odd" : "cf-t-lane" }));
    });
    // time grid
    const span = view.t1 - view.t0;
    const step = niceStep(span / 8);
    for (let t = Math.ceil(view.t0 / step) * step; t <= view.t1; t += step) {
      const x = scaleX(t, view, width);
      chart.append(svg("line", { x1: x, x2: x, y1: 0, y2: height, class: "cf-t-grid" }));
      const label = svg("text", { x: x + 2, y: 10, class: "cf-t-axis" });
      label.textContent = formatSeconds(t);
      chart.append(label);
    }
    for (const [i, b] of d.bars.entries()) {
      if (b.t0 > view.t1 || (b.t1 ?? full()) < view.t0) continue;
      const x0 = Math.max(-1, scaleX(b.t0, view, width));
      const x1 = Math.min(width + 1, scaleX(b.t1 ?? full(), view, width));
      const cls = `cf-t-bar ${STATUS_CLASS[b.final] ?? ""} ${b.status !== b.final && b.status !== "running" ? "cf-t-attempt" : ""} ${b.t1 === null ? "cf-t-open" : ""}`;
      const rect = svg("rect", { x: x0, y: TOP + b.lane * LANE_H + 3, width: Math.max(2, x1 - x0), height: LANE_H - 6, rx: 2, class: cls });
      rect.dataset.bar = i;
      chart.append(rect);
    }
    for (const [i, m] of d.markers.entries()) {
      if (m.t < view.t0 || m.t > view.t1) continue;
      const y = m.lane === null || m.lane === undefined ? TOP / 2 + 5 : TOP + m.lane * LANE_H + LANE_H / 2 + 4;
      const glyph = svg("text", { x: scaleX(m.t, view, width), y, class: `cf-t-marker cf-t-m-${m.kind}`, "text-anchor": "middle" });
      glyph.textContent = MARKER_GLYPH[m.kind] ?? "•";
      glyph.dataset.marker = i;
      chart.append(glyph);
    }
    const pos = model.get("position") || {};
    const cx = scaleX(pos.t ?? full(), view, width);
    chart.append(svg("line", { x1: cx, x2: cx, y1: 0, y2: height, class: "cf-t-cursor" }));
    slider.value = String(Math.round(((pos.t ?? full()) / full()) * 1000));
    title.textContent = model.get("title") || "tape";
    info.textContent = ` ${d.events ?? 0} events · ${formatSeconds(d.duration_s)} · ${d.lanes.length} lanes` +
      (d.truncated ? ` · cut off at line ${d.truncated}` : "");
    reload.style.display = model.get("reloadable") ? "" : "none";
  }

  function drawState() {
    const s = model.get("state") || {};
    const pos = model.get("position") || {};
    where.textContent = `t = ${formatSeconds(pos.t ?? 0)} · seq ${s.seq ?? "–"} · ${s.event ?? ""}`;
    const counts = s.counts || {};
    const chips = Object.entries(counts).filter(([, n]) => n).map(([k, n]) => el("span", { class: `cf-t-chip ${STATUS_CLASS[k] ?? ""}` }, `${k} ${n}`));
    const workers = (s.workers || []).map((w) => `${w.worker_id} (${w.status}, ${w.jobs} jobs)`).join(", ");
    const rows = (s.active || []).map((j) => el("tr", {}, el("td", {}, j.job_id), el("td", {}, j.cancel_requested ? "aborting…" : j.status), el("td", {}, j.worker_id ?? ""), el("td", {}, j.plugin_name ?? "")));
    statePanel.replaceChildren(
      el("div", { class: "cf-t-panel-title" }, `queue at this moment (${s.jobs_total ?? 0} jobs)`),
      el("div", { class: "cf-t-chips" }, ...chips),
      el("div", { class: "cf-t-small" }, workers ? `workers: ${workers}` : "no workers yet"),
      el("div", { class: "cf-t-small" }, `retries ${s.retries ?? 0} · cancels ${s.cancels ?? 0}`),
      rows.length
        ? el("table", { class: "cf-t-active" }, el("tr", {}, el("th", {}, "job"), el("th", {}, "status"), el("th", {}, "worker"), el("th", {}, "plugin")), ...rows)
        : el("div", { class: "cf-t-small" }, "no job queued or running"),
    );
    const pos2 = model.get("position") || {};
    const cursor = chart.querySelector(".cf-t-cursor");
    if (cursor) {
      const cx = scaleX(pos2.t ?? full(), view, width);
      cursor.setAttribute("x1", cx);
      cursor.setAttribute("x2", cx);
    }
  }

  function showDetail(titleText, obj) {
    detail.replaceChildren(el("div", { class: "cf-t-panel-title" }, titleText), el("pre", {}, JSON.stringify(obj, null, 2)));
  }

  function itemAt(target) {
    const d = data();
    if (target.dataset?.bar !== undefined) return { bar: d.bars[Number(target.dataset.bar)] };
    if (target.dataset?.marker !== undefined) return { marker: d.markers[Number(target.dataset.marker)] };
    return null;
  }

  // -- hover, click ----------------------------------------------------------------------------
  chart.addEventListener("mousemove", (e) => {
    const item = itemAt(e.target);
    if (!item) { tip.style.display = "none"; return; }
    const b = item.bar;
    const m = item.marker;
    tip.textContent = b
      ? `job ${b.job} · attempt ${b.attempt} · ${b.status}${b.final !== b.status ? ` (final: ${b.final})` : ""} · ${formatSeconds(b.t0)} → ${b.t1 === null ? "open" : formatSeconds(b.t1)}${b.plugin ? ` · ${b.plugin}` : ""}`
      : `${m.label} · ${m.kind} · seq ${m.seq} · ${formatSeconds(m.t)}`;
    const box = root.getBoundingClientRect();
    tip.style.left = `${e.clientX - box.left + 12}px`;
    tip.style.top = `${e.clientY - box.top + 12}px`;
    tip.style.display = "block";
  });
  chart.addEventListener("mouseleave", () => { tip.style.display = "none"; });
  chart.addEventListener("click", (e) => {
    if (dragged) return;
    const item = itemAt(e.target);
    if (item?.marker) {
      detail.replaceChildren(el("div", { class: "cf-t-hint" }, `loading event ${item.marker.seq}…`));
      model.send({ type: "payload", seq: item.marker.seq });
    } else if (item?.bar) {
      showDetail(`job ${item.bar.job}, attempt ${item.bar.attempt}`, item.bar);
    }
  });
  model.on("msg:custom", (msg) => {
    if (msg?.type === "payload") showDetail(`event seq ${msg.seq}`, msg.event ?? "no such event");
  });

  // -- zoom and pan (local) -------------------------------------------------------------------
  const timeAt = (clientX) => view.t0 + ((clientX - chart.getBoundingClientRect().left) / width) * (view.t1 - view.t0);
  chart.addEventListener("wheel", (e) => {
    e.preventDefault();
    view = zoomView(view, e.deltaY < 0 ? 0.8 : 1.25, timeAt(e.clientX), full());
    draw();
  }, { passive: false });
  let dragFrom = null;
  let dragged = false;
  chart.addEventListener("mousedown", (e) => { dragFrom = e.clientX; dragged = false; });
  window.addEventListener("mouseup", () => { dragFrom = null; });
  chart.addEventListener("mousemove", (e) => {
    if (dragFrom === null || !(e.buttons & 1)) return;
    const dx = e.clientX - dragFrom;
    if (Math.abs(dx) < 3 && !dragged) return;
    dragged = true;
    view = panView(view, (-dx / width) * (view.t1 - view.t0), full());
    dragFrom = e.clientX;
    draw();
  });
  chart.addEventListener("dblclick", () => { view = { t0: 0, t1: full() }; draw(); });
  zoomIn.addEventListener("click", () => { view = zoomView(view, 0.5, (view.t0 + view.t1) / 2, full()); draw(); });
  zoomOut.addEventListener("click", () => { view = zoomView(view, 2, (view.t0 + view.t1) / 2, full()); draw(); });
  reset.addEventListener("click", () => { view = { t0: 0, t1: full() }; draw(); });
  reload.addEventListener("click", () => model.send({ type: "reload" }));

  // -- scrubber: the kernel replays; sends are throttled while dragging -------------------------
  let pending = null;
  let timer = null;
  const flushScrub = () => {
    timer = null;
    if (pending !== null) { model.send({ type: "scrub", t: pending }); pending = null; }
  };
  slider.addEventListener("input", () => {
    pending = (Number(slider.value) / 1000) * full();
    if (timer === null) timer = setTimeout(flushScrub, 60);
  });
  prev.addEventListener("click", () => {
    const s = model.get("state") || {};
    model.send({ type: "scrub", seq: Math.max(-1, (s.seq ?? 0) - 1) });
  });
  next.addEventListener("click", () => {
    const s = model.get("state") || {};
    model.send({ type: "scrub", seq: (s.seq ?? -1) + 1 });
  });

  model.on("change:data", () => { view = { t0: 0, t1: full() }; draw(); });
  model.on("change:state", drawState);
  model.on("change:position", drawState);
  const resize = new ResizeObserver(() => draw());
  resize.observe(plot);
  draw();
  drawState();
  return () => { resize.disconnect(); if (timer !== null) clearTimeout(timer); };
}

function niceStep(raw) {
  const pow = 10 ** Math.floor(Math.log10(Math.max(raw, 1e-6)));
  for (const m of [1, 2, 5, 10]) if (raw <= m * pow) return m * pow;
  return 10 * pow;
}

export default { render };
