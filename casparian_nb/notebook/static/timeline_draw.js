// Tape timeline drawing for casparian_nb: a pure ES module (no anywidget, no model, no build).
//
// Shared by the notebook widget (timeline.js) and the JupyterLab `.tape` viewer. Interface:
//
//   const tl = mountTimeline(el, {
//     payload,                       // casparian_nb.tape.timeline_data.timeline_payload(...)
//     title: "golden.tape",
//     fetchView: (view, widthPx) => Promise<payload>,   // zoom/pan: the payload of a view
//     fetchEvent: (seq) => Promise<envelope | null>,     // optional: a marker's full event
//     scrub: ({t} | {seq}) => void,                      // optional: the scrubber (kernel replay)
//     reload: () => void,                                // optional: re-read the tape
//   });
//   tl.update(payload)            // a new whole-tape payload (the tape grew): keeps the view
//   tl.setState(state, position)  // the replayed queue at the scrubber ({t, seq})
//   tl.setTitle(text); tl.destroy()
//
// The payload (documented in timeline_data.py) carries lanes (worker slots), a queue-depth
// strip, and either exact bars ("mode": "bars") or a busy share per lane and bin ("bins").
// Zoom and pan redraw at once from what is loaded, then ask fetchView for the level of detail
// of the new view (debounced; only the latest answer is drawn).

const SVGNS = "http://www.w3.org/2000/svg";
const TOP = 22; // the session row: commands and markers without a lane
const DEPTH_H = 40; // the queue-depth strip
const FETCH_DELAY_MS = 150;

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

/** The payload's columnar bars as objects ({job, lane, t0, t1, status, final, attempt}). */
export function barList(payload) {
  const b = payload?.bars;
  if (!b) return [];
  const names = payload.statuses || [];
  return b.job.map((job, i) => ({
    job, lane: b.lane[i], t0: b.t0[i], t1: b.t1[i], attempt: b.attempt[i],
    status: names[b.status[i]] ?? String(b.status[i]), final: names[b.final[i]] ?? String(b.final[i]),
  }));
}

/** Lane label: "w1", then "w1 #2", "w1 #3" for the worker's further slots. */
export function laneLabel(lane) {
  return lane.slot ? `${lane.worker} #${lane.slot + 1}` : lane.worker;
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

function niceStep(raw) {
  const pow = 10 ** Math.floor(Math.log10(Math.max(raw, 1e-6)));
  for (const m of [1, 2, 5, 10]) if (raw <= m * pow) return m * pow;
  return 10 * pow;
}

/** Mount a timeline in `root`; see the interface at the top of this file. */
export function mountTimeline(root, options) {
  const { fetchView, fetchEvent, scrub, reload: reloadTape } = options;
  let whole = options.payload; // the whole tape's payload (lanes, counts, duration)
  let shown = options.payload; // the payload of the view being drawn
  const full = () => Math.max(1e-3, whole?.duration_s || 0);
  let view = { t0: 0, t1: full() };
  let width = 800;
  let bars = barList(shown);
  let position = { t: full(), seq: whole?.last_seq ?? null };
  let fetchTimer = null;
  let fetchId = 0;
  root.classList.add("cf-timeline");

  const title = el("span", { class: "cf-t-title" }, options.title || "tape");
  const info = el("span", { class: "cf-t-info" });
  const lod = el("span", { class: "cf-t-lod" });
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
  const scrubRow = el("div", { class: "cf-t-scrub" }, prev, slider, next, where);
  if (!scrub) scrubRow.style.display = "none";
  if (!reloadTape) reload.style.display = "none";
  root.append(
    el("div", { class: "cf-t-head" }, title, info, lod, el("span", { class: "cf-t-spacer" }), zoomIn, zoomOut, reset, reload),
    body, scrubRow, el("div", { class: "cf-t-panels" }, statePanel, detail), tip,
  );

  const laneH = () => Math.max(6, Math.min(20, Math.floor(480 / Math.max(1, (whole?.lanes || []).length))));
  const laneY = (lane) => TOP + DEPTH_H + lane * laneH();

  function draw() {
    const lanes = whole?.lanes || [];
    const lh = laneH();
    width = Math.max(200, plot.clientWidth || 800);
    const height = laneY(lanes.length) + 4;
    chart.setAttribute("width", width);
    chart.setAttribute("height", height);
    chart.replaceChildren();
    labels.replaceChildren(
      el("div", { class: "cf-t-lane-label cf-t-muted", style: `height:${TOP}px` }, "session"),
      el("div", { class: "cf-t-lane-label cf-t-muted", style: `height:${DEPTH_H}px` }, "queue depth"),
      ...lanes.map((l) => el("div", { class: "cf-t-lane-label", style: `height:${lh}px;font-size:${Math.min(12, lh)}px`, title: laneLabel(l) }, lh >= 9 ? laneLabel(l) : "")),
    );
    lanes.forEach((_, i) => {
      chart.append(svg("rect", { x: 0, y: laneY(i), width, height: lh, class: `cf-t-lane${i % 2 ? " odd" : ""}` }));
    });
    const span = view.t1 - view.t0;
    const step = niceStep(span / 8);
    for (let t = Math.ceil(view.t0 / step) * step; t <= view.t1; t += step) {
      const x = scaleX(t, view, width);
      chart.append(svg("line", { x1: x, x2: x, y1: 0, y2: height, class: "cf-t-grid" }));
      const label = svg("text", { x: x + 2, y: 10, class: "cf-t-axis" });
      label.textContent = formatSeconds(t);
      chart.append(label);
    }
    drawDepth(shown?.depth);
    if (shown?.mode === "bins") drawDensity(shown.density, lh);
    else drawBars(lh);
    drawMarkers(lh);
    const cx = scaleX(position.t ?? full(), view, width);
    chart.append(svg("line", { x1: cx, x2: cx, y1: 0, y2: height, class: "cf-t-cursor" }));
    slider.value = String(Math.round(((position.t ?? full()) / full()) * 1000));
    info.textContent = ` ${(whole?.events ?? 0).toLocaleString()} events · ${(whole?.jobs ?? 0).toLocaleString()} jobs · ${formatSeconds(whole?.duration_s ?? 0)} · ${lanes.length} worker slots` +
      (whole?.truncated ? ` · cut off at line ${whole.truncated}` : "");
    lod.textContent = shown?.mode === "bins" ? " · zoomed out: busy share per slot (zoom in for bars)" : "";
  }

  function drawDepth(depth) {
    if (!depth) return;
    // Each series on its own scale: thousands queued would flatten a few dozen running.
    const peaks = {};
    for (const [key, cls] of [["queued", "cf-t-depth-queued"], ["running", "cf-t-depth-running"]]) {
      const peak = Math.max(1, ...depth[key]);
      peaks[key] = Math.max(0, ...depth[key]);
      const pts = [];
      const base = TOP + DEPTH_H - 2;
      depth[key].forEach((v, k) => {
        const y = base - (v / peak) * (DEPTH_H - 6);
        pts.push(`${scaleX(depth.t0 + k * depth.dt, view, width)},${y}`, `${scaleX(depth.t0 + (k + 1) * depth.dt, view, width)},${y}`);
      });
      if (!pts.length) continue;
      const start = scaleX(depth.t0, view, width);
      const end = scaleX(depth.t0 + depth[key].length * depth.dt, view, width);
      const poly = svg("polygon", { points: `${start},${base} ${pts.join(" ")} ${end},${base}`, class: `cf-t-depth ${cls}` });
      poly.dataset.depth = key;
      chart.append(poly);
    }
    const label = svg("text", { x: 4, y: TOP + 10, class: "cf-t-axis" });
    label.textContent = `queued (grey) max ${peaks.queued} · running (blue) max ${peaks.running}`;
    chart.append(label);
  }

  function drawBars(lh) {
    const end = full();
    for (const [i, b] of bars.entries()) {
      if (b.t0 > view.t1 || (b.t1 ?? end) < view.t0) continue;
      const x0 = Math.max(-1, scaleX(b.t0, view, width));
      const x1 = Math.min(width + 1, scaleX(b.t1 ?? end, view, width));
      const cls = `cf-t-bar ${STATUS_CLASS[b.final] ?? ""} ${b.status !== b.final && b.status !== "running" ? "cf-t-attempt" : ""} ${b.t1 === null ? "cf-t-open" : ""}`;
      const rect = svg("rect", { x: x0, y: laneY(b.lane) + 1, width: Math.max(1.5, x1 - x0), height: Math.max(2, lh - 2), rx: lh > 8 ? 2 : 0, class: cls });
      rect.dataset.bar = i;
      chart.append(rect);
    }
  }

  function drawDensity(dens, lh) {
    if (!dens) return;
    dens.busy.forEach((row, lane) => {
      let k = 0;
      while (k < row.length) { // runs of one level: one rect
        const level = Math.round(row[k] / 10);
        let e = k + 1;
        while (e < row.length && Math.round(row[e] / 10) === level) e++;
        if (level > 0) {
          const x0 = scaleX(dens.t0 + k * dens.dt, view, width);
          const x1 = scaleX(dens.t0 + e * dens.dt, view, width);
          const rect = svg("rect", { x: x0, y: laneY(lane) + 1, width: Math.max(0.5, x1 - x0), height: Math.max(2, lh - 2), class: "cf-t-density", "fill-opacity": (level / 10).toFixed(1) });
          rect.dataset.bin = `${lane}:${k}:${e}`;
          chart.append(rect);
        }
        k = e;
      }
      dens.failed[lane].forEach((n, j) => {
        if (!n) return;
        const x = scaleX(dens.t0 + (j + 0.5) * dens.dt, view, width);
        chart.append(svg("rect", { x: x - 1, y: laneY(lane), width: 2, height: Math.max(2, lh / 3), class: "cf-t-failed-tick" }));
      });
    });
  }

  function drawMarkers(lh) {
    for (const [i, m] of (shown?.markers || []).entries()) {
      if (m.t < view.t0 || m.t > view.t1) continue;
      const y = m.lane === null || m.lane === undefined ? TOP / 2 + 5 : laneY(m.lane) + lh / 2 + 4;
      const glyph = svg("text", { x: scaleX(m.t, view, width), y, class: `cf-t-marker cf-t-m-${m.kind}`, "text-anchor": "middle", "font-size": Math.min(13, lh + 4) });
      glyph.textContent = MARKER_GLYPH[m.kind] ?? "•";
      glyph.dataset.marker = i;
      chart.append(glyph);
    }
    const mb = shown?.marker_bins;
    if (!mb) return;
    for (const [kind, counts] of Object.entries(mb.counts)) {
      const peak = Math.max(1, ...counts);
      counts.forEach((n, k) => {
        if (!n) return;
        const h = 3 + (Math.log1p(n) / Math.log1p(peak)) * (TOP - 8);
        const x = scaleX(mb.t0 + k * mb.dt, view, width);
        const rect = svg("rect", { x, y: TOP - h, width: Math.max(1, scaleX(mb.t0 + (k + 1) * mb.dt, view, width) - x), height: h, class: `cf-t-mbin cf-t-m-${kind}` });
        rect.dataset.mbin = `${kind}:${n}`;
        chart.append(rect);
      });
    }
  }

  function showDetail(titleText, obj) {
    detail.replaceChildren(el("div", { class: "cf-t-panel-title" }, titleText), el("pre", {}, JSON.stringify(obj, null, 2)));
  }

  function itemAt(target) {
    const d = target.dataset || {};
    if (d.bar !== undefined) return { bar: bars[Number(d.bar)] };
    if (d.marker !== undefined) return { marker: shown.markers[Number(d.marker)] };
    if (d.bin !== undefined) {
      const [lane, k, e] = d.bin.split(":").map(Number);
      const dens = shown.density;
      const busy = dens.busy[lane].slice(k, e);
      return { bin: { lane: laneLabel(whole.lanes[lane]), t0: dens.t0 + k * dens.dt, t1: dens.t0 + e * dens.dt, busy: Math.round(busy.reduce((a, b) => a + b, 0) / busy.length) } };
    }
    if (d.mbin !== undefined) return { mbin: d.mbin };
    return null;
  }

  // -- hover, click ----------------------------------------------------------------------------
  chart.addEventListener("mousemove", (e) => {
    const item = itemAt(e.target);
    if (!item) { tip.style.display = "none"; return; }
    const { bar: b, marker: m, bin } = item;
    if (b) tip.textContent = `job ${b.job} · attempt ${b.attempt} · ${b.status}${b.final !== b.status ? ` (final: ${b.final})` : ""} · ${formatSeconds(b.t0)} → ${b.t1 === null ? "open" : formatSeconds(b.t1)}`;
    else if (m) tip.textContent = `${m.label} · ${m.kind} · seq ${m.seq} · ${formatSeconds(m.t)}`;
    else if (bin) tip.textContent = `${bin.lane} · ${formatSeconds(bin.t0)} → ${formatSeconds(bin.t1)} · ${bin.busy}% busy`;
    else tip.textContent = `${item.mbin.replace(":", " × ")} (zoom in for each)`;
    const box = root.getBoundingClientRect();
    tip.style.left = `${e.clientX - box.left + 12}px`;
    tip.style.top = `${e.clientY - box.top + 12}px`;
    tip.style.display = "block";
  });
  chart.addEventListener("mouseleave", () => { tip.style.display = "none"; });
  chart.addEventListener("click", (e) => {
    if (dragged) return;
    const item = itemAt(e.target);
    if (item?.marker && fetchEvent) {
      const seq = item.marker.seq;
      detail.replaceChildren(el("div", { class: "cf-t-hint" }, `loading event ${seq}…`));
      fetchEvent(seq).then((event) => showDetail(`event seq ${seq}`, event ?? "no such event"));
    } else if (item?.marker) {
      showDetail(`event seq ${item.marker.seq}`, item.marker);
    } else if (item?.bar) {
      showDetail(`job ${item.bar.job}, attempt ${item.bar.attempt}`, item.bar);
    }
  });

  // -- zoom and pan: redraw now, fetch the level of detail of the new view ---------------------
  function setView(next) {
    view = next;
    draw();
    if (!fetchView) return;
    if (fetchTimer !== null) clearTimeout(fetchTimer);
    fetchTimer = setTimeout(() => {
      fetchTimer = null;
      const id = ++fetchId;
      const asked = view;
      fetchView(asked, width).then((payload) => {
        if (id !== fetchId || !payload) return; // a later view was asked for meanwhile
        shown = payload;
        bars = barList(shown);
        draw();
        root.dataset.mode = shown.mode;
        root.dataset.view = `${asked.t0},${asked.t1}`;
      });
    }, FETCH_DELAY_MS);
  }
  const timeAt = (clientX) => view.t0 + ((clientX - chart.getBoundingClientRect().left) / width) * (view.t1 - view.t0);
  chart.addEventListener("wheel", (e) => {
    e.preventDefault();
    setView(zoomView(view, e.deltaY < 0 ? 0.8 : 1.25, timeAt(e.clientX), full()));
  }, { passive: false });
  let dragFrom = null;
  let dragged = false;
  chart.addEventListener("mousedown", (e) => { dragFrom = e.clientX; dragged = false; });
  const onUp = () => { dragFrom = null; };
  window.addEventListener("mouseup", onUp);
  chart.addEventListener("mousemove", (e) => {
    if (dragFrom === null || !(e.buttons & 1)) return;
    const dx = e.clientX - dragFrom;
    if (Math.abs(dx) < 3 && !dragged) return;
    dragged = true;
    dragFrom = e.clientX;
    setView(panView(view, (-dx / width) * (view.t1 - view.t0), full()));
  });
  chart.addEventListener("dblclick", () => setView({ t0: 0, t1: full() }));
  zoomIn.addEventListener("click", () => setView(zoomView(view, 0.5, (view.t0 + view.t1) / 2, full())));
  zoomOut.addEventListener("click", () => setView(zoomView(view, 2, (view.t0 + view.t1) / 2, full())));
  reset.addEventListener("click", () => setView({ t0: 0, t1: full() }));
  reload.addEventListener("click", () => reloadTape?.());

  // -- scrubber: the kernel replays; sends are throttled while dragging -------------------------
  let pending = null;
  let timer = null;
  const flushScrub = () => {
    timer = null;
    if (pending !== null) { scrub?.({ t: pending }); pending = null; }
  };
  slider.addEventListener("input", () => {
    pending = (Number(slider.value) / 1000) * full();
    if (timer === null) timer = setTimeout(flushScrub, 60);
  });
  let state = {};
  prev.addEventListener("click", () => scrub?.({ seq: Math.max(-1, (state.seq ?? 0) - 1) }));
  next.addEventListener("click", () => scrub?.({ seq: (state.seq ?? -1) + 1 }));

  function drawState() {
    const s = state;
    where.textContent = `t = ${formatSeconds(position.t ?? 0)} · seq ${s.seq ?? "–"} · ${s.event ?? ""}`;
    const chips = Object.entries(s.counts || {}).filter(([, n]) => n).map(([k, n]) => el("span", { class: `cf-t-chip ${STATUS_CLASS[k] ?? ""}` }, `${k} ${n}`));
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
    const cursor = chart.querySelector(".cf-t-cursor");
    if (cursor) {
      const cx = scaleX(position.t ?? full(), view, width);
      cursor.setAttribute("x1", cx);
      cursor.setAttribute("x2", cx);
    }
    slider.value = String(Math.round(((position.t ?? full()) / full()) * 1000));
  }

  const resize = new ResizeObserver(() => draw());
  resize.observe(plot);
  root.dataset.mode = shown?.mode ?? "";
  draw();
  if (!scrub) statePanel.style.display = "none";

  return {
    update(payload) {
      const wasWhole = view.t0 <= 0 && view.t1 >= full() - 1e-9;
      whole = payload;
      if (wasWhole) { view = { t0: 0, t1: full() }; shown = payload; bars = barList(shown); draw(); root.dataset.mode = shown.mode; }
      else setView(view); // keep the user's zoom; refetch its detail
    },
    setState(nextState, nextPosition) {
      state = nextState || {};
      position = nextPosition || position;
      drawState();
    },
    setTitle(text) { title.textContent = text || "tape"; },
    destroy() {
      resize.disconnect();
      window.removeEventListener("mouseup", onUp);
      if (timer !== null) clearTimeout(timer);
      if (fetchTimer !== null) clearTimeout(fetchTimer);
    },
  };
}
