// Job-queue table for casparian_nb (anywidget ES module; no build step, no dependencies).
//
// The kernel owns the data: it sends the visible page (`rows`), the counts per status
// (`counts`), the number of rows matching the filter (`total`) and the current `view`
// (filter, sort, offset, limit). Every interaction is a message back to the kernel
// (`model.send`), which answers with a new page; nothing here changes a job's status.
// Running jobs' durations tick locally from their start time, so an idle queue costs
// no comm traffic. The status names come from the kernel too (`vocabulary`: the statuses
// the table counts, in order, and which of them mean queued, running and dispatched), so
// this file spells none of them.

/** The kernel's status vocabulary, or an empty one before the first sync. */
export function vocabularyOf(model) {
  return model.get("vocabulary") || { statuses: [], queued: null, running: null, dispatched: null };
}

/** The segments of the stacked status bar: [status, percent] for every status with jobs. */
export function barSegments(vocabulary, counts) {
  const total = counts.total || 0;
  if (!total) return [];
  return vocabulary.statuses.filter((s) => counts[s]).map((s) => [s, (100 * counts[s]) / total]);
}

/** "3.2 jobs/s" ("" when nothing finished lately). */
export function formatRate(rate) {
  if (!rate) return "";
  return `${rate < 10 ? rate.toFixed(1) : Math.round(rate)} jobs/s`;
}

/** The status chips to show: every status with jobs, and the one filtered on. */
export function shownStatuses(vocabulary, counts, current) {
  return vocabulary.statuses.filter((s) => counts[s] || current === s);
}

export const COLUMNS = [
  { key: "id", label: "#", sortable: true, cls: "num" },
  { key: "status", label: "status", sortable: true },
  { key: "plugin", label: "plugin", sortable: true },
  { key: "input", label: "input", sortable: true },
  { key: "worker", label: "worker", sortable: true },
  { key: "rows", label: "rows", sortable: true, cls: "num" },
  { key: "duration", label: "duration", sortable: true, cls: "num" },
  { key: "error", label: "error", sortable: false },
  { key: "action", label: "", sortable: false },
];

/** "850 ms", "12.3 s", "4 min 05 s", "2 h 03 min"; "" for null. */
export function formatDuration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(Math.floor(s % 60)).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}

/** "26–50 of 10,000" for the pager. */
export function pageLabel(view, total) {
  if (!total) return "no jobs";
  const first = Math.min(view.offset + 1, total);
  const last = Math.min(view.offset + view.limit, total);
  return `${first.toLocaleString()}–${last.toLocaleString()} of ${total.toLocaleString()}`;
}

/** The view after clicking a column header: same column flips order, new column sorts. */
export function nextSort(view, key) {
  if (view.sort === key) return { sort: key, desc: !view.desc, offset: 0 };
  return { sort: key, desc: key === "id" || key === "duration" || key === "rows", offset: 0 };
}

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c ?? ""));
  return node;
}

function statusCell(row, vocabulary) {
  const label = row.label || row.status;
  const cls = label === "aborting…" ? "ABORTING" : label === "dispatched" ? vocabulary.dispatched : row.status;
  const cell = h("span", {}, h("span", { class: `cf-q-badge cf-st-${cls}` }, label));
  if (row.dead_letter) cell.append(" ", h("span", { class: "cf-q-mark cf-q-dead", title: `dead letter: ${row.dead_letter}` }, "dead"));
  if (row.stale) cell.append(" ", h("span", { class: "cf-q-mark cf-q-stale", title: "processed by this plugin version with a different source; force=True re-runs it" }, "stale"));
  if (row.attempt > 1) cell.append(" ", h("span", { class: "cf-q-mark", title: "attempt" }, `#${row.attempt}`));
  return cell;
}

/** The expanded row: error, traceback, attempts and the log's last lines. */
function detailNode(detail, colspan) {
  const box = h("div", { class: "cf-q-detail" });
  if (detail.error) box.append(h("div", { class: "cf-q-detail-error" }, detail.error));
  if (detail.dead_letter) box.append(h("div", {}, `dead letter: ${detail.dead_letter}`));
  if (detail.traceback) box.append(h("pre", { class: "cf-q-traceback" }, detail.traceback));
  const attempts = detail.attempts || [];
  if (attempts.length) {
    const list = h("ol", { class: "cf-q-attempts" });
    for (const a of attempts) {
      list.append(h("li", { value: a.attempt }, `${a.status} on ${a.worker_id ?? "-"}, ${a.started_at ?? "-"} → ${a.ended_at ?? "-"}${a.error_message ? `: ${a.error_message}` : ""}`));
    }
    box.append(h("div", {}, "attempts"), list);
  }
  if (detail.log) box.append(h("div", {}, "log (last lines)"), h("pre", { class: "cf-q-log" }, detail.log));
  return h("tr", { class: "cf-q-detail-row", dataset: { id: detail.job_id } }, h("td", { colspan }, box));
}

function durationText(row, now, running) {
  if (row.duration_ms !== null && row.duration_ms !== undefined) return formatDuration(row.duration_ms);
  if (row.status === running && row.start) return formatDuration(Math.max(0, now - row.start * 1000));
  return "";
}

function rowNode(row, now, vocabulary) {
  const running = vocabulary.running;
  const action = row.cancellable
    ? h("button", { class: "cf-q-cancel", title: `cancel job ${row.id}`, dataset: { id: row.id } }, "cancel")
    : row.retryable
      ? h("button", { class: "cf-q-retry", title: `retry job ${row.id} as a new attempt`, dataset: { id: row.id } }, "retry")
      : "";
  const tr = h(
    "tr",
    { class: `cf-q-row cf-row-${row.status}`, dataset: { id: row.id } },
    h("td", { class: "num" }, row.id),
    h("td", {}, statusCell(row, vocabulary)),
    h("td", {}, row.plugin ?? ""),
    h("td", { class: "cf-q-input", title: row.path ?? "" }, row.input ?? ""),
    h("td", {}, row.worker ?? ""),
    h("td", { class: "num" }, row.rows === null || row.rows === undefined ? "" : row.rows.toLocaleString()),
    h("td", { class: "num cf-q-dur", dataset: { start: row.start ?? "" } }, durationText(row, now, running)),
    h("td", {
      class: "cf-q-error",
      // the hover says what the error was: a plugin's error, or its host killed by a signal
      title: row.error_cause ? `${row.error_cause}: ${row.error ?? ""}` : row.error ?? "",
      dataset: { kind: row.error_kind ?? "" },
    }, row.error ?? ""),
    h("td", {}, action),
  );
  if (row.status === running && (row.duration_ms === null || row.duration_ms === undefined)) {
    tr.classList.add("cf-q-live");
  }
  return tr;
}

function render({ model, el }) {
  el.classList.add("cf-queue");
  const send = (msg) => model.send(msg);
  const view = () => model.get("view") || { status: "", sort: "id", desc: true, offset: 0, limit: 25 };

  const chips = h("div", { class: "cf-q-chips" });
  const cancelAll = h("button", { class: "cf-q-cancel-all", title: "cancel every queued job" }, "cancel all queued");
  const retryAll = h("button", { class: "cf-q-retry-all", title: "retry every failed or aborted job" }, "retry all failed");
  const bar = h("div", { class: "cf-q-bar" });
  const rate = h("span", { class: "cf-q-rate" });
  const refresh = h("button", { class: "cf-q-refresh", title: "re-read the state database" }, "↻");
  const message = h("div", { class: "cf-q-msg" });
  const thead = h("tr");
  const tbody = h("tbody");
  const table = h("table", { class: "cf-q-table" }, h("thead", {}, thead), tbody);
  const prev = h("button", { class: "cf-q-prev", title: "previous page" }, "‹");
  const next = h("button", { class: "cf-q-next", title: "next page" }, "›");
  const label = h("span", { class: "cf-q-page" });
  const size = h("select", { class: "cf-q-size", title: "rows per page" });
  for (const n of [10, 25, 50, 100, 250]) size.append(h("option", { value: n }, `${n} / page`));
  el.append(
    h("div", { class: "cf-q-head" }, bar, rate, chips, h("span", { class: "cf-q-spacer" }), refresh, retryAll, cancelAll),
    message,
    h("div", { class: "cf-q-scroll" }, table),
    h("div", { class: "cf-q-pager" }, prev, label, next, size),
  );

  function drawHeader() {
    const v = view();
    thead.replaceChildren(
      ...COLUMNS.map((c) => {
        const arrow = v.sort === c.key ? (v.desc ? " ▾" : " ▴") : "";
        return h("th", { class: `${c.cls ?? ""} ${c.sortable ? "cf-q-sortable" : ""}`, dataset: { key: c.key } }, c.label + arrow);
      }),
    );
  }

  function drawChips() {
    const counts = model.get("counts") || {};
    const v = view();
    const chip = (status, text, n) =>
      h("button", { class: `cf-q-chip cf-st-${status || "ALL"} ${v.status === status ? "cf-q-on" : ""}`, dataset: { status } }, `${text} ${Number(n || 0).toLocaleString()}`);
    const nodes = [chip("", "all", counts.total)];
    const vocabulary = vocabularyOf(model);
    for (const s of shownStatuses(vocabulary, counts, v.status)) nodes.push(chip(s, s.toLowerCase(), counts[s]));
    if (counts.aborting) nodes.push(chip("ABORTING", "aborting…", counts.aborting));
    if (counts.dead || v.status === vocabulary.dead) nodes.push(chip(vocabulary.dead, "dead", counts.dead));
    const workers = model.get("workers");
    if (workers) nodes.push(h("span", { class: "cf-q-workers" }, `${workers} worker${workers === 1 ? "" : "s"}`));
    chips.replaceChildren(...nodes);
    cancelAll.disabled = !counts[vocabulary.queued];
    retryAll.disabled = !(vocabulary.retryable || []).some((s) => counts[s]);
    bar.replaceChildren(...barSegments(vocabulary, counts).map(([s, pct]) =>
      h("span", { class: `cf-q-seg cf-st-${s}`, style: `width:${pct.toFixed(2)}%`, title: `${s.toLowerCase()} ${counts[s]}` })));
  }

  function drawRate() {
    rate.textContent = formatRate(model.get("throughput"));
  }

  function drawRows() {
    const now = Date.now();
    const rows = model.get("rows") || [];
    const vocabulary = vocabularyOf(model);
    const detail = model.get("detail") || {};
    const nodes = [];
    for (const r of rows) {
      nodes.push(rowNode(r, now, vocabulary));
      if (detail.job_id === r.id) nodes.push(detailNode(detail, COLUMNS.length));
    }
    tbody.replaceChildren(...nodes);
    if (!rows.length) tbody.append(h("tr", {}, h("td", { class: "cf-q-empty", colspan: COLUMNS.length }, "no jobs")));
  }

  function drawPager() {
    const v = view();
    const total = model.get("total") || 0;
    label.textContent = pageLabel(v, total);
    prev.disabled = v.offset <= 0;
    next.disabled = v.offset + v.limit >= total;
    size.value = String(v.limit);
  }

  function drawMessage() {
    const text = model.get("message") || "";
    message.textContent = text;
    message.style.display = text ? "" : "none";
  }

  function drawAll() {
    drawHeader();
    drawChips();
    drawRows();
    drawPager();
    drawMessage();
    drawRate();
  }

  // -- interactions: every one is a message; the kernel answers with new state ---------------
  thead.addEventListener("click", (e) => {
    const th = e.target.closest("th.cf-q-sortable");
    if (th) send({ type: "view", ...nextSort(view(), th.dataset.key) });
  });
  chips.addEventListener("click", (e) => {
    const b = e.target.closest("button.cf-q-chip");
    if (b) send({ type: "view", status: view().status === b.dataset.status ? "" : b.dataset.status, offset: 0 });
  });
  tbody.addEventListener("click", (e) => {
    const b = e.target.closest("button.cf-q-cancel, button.cf-q-retry");
    if (b) {
      b.disabled = true; // the row's status changes only when the kernel says so
      b.textContent = "…";
      const type = b.classList.contains("cf-q-retry") ? "retry" : "cancel";
      send({ type, job_id: Number(b.dataset.id) });
      return;
    }
    const tr = e.target.closest("tr.cf-q-row");
    if (!tr) return;
    const id = Number(tr.dataset.id);
    const open = (model.get("detail") || {}).job_id === id;
    send(open ? { type: "collapse" } : { type: "expand", job_id: id });
  });
  retryAll.addEventListener("click", () => {
    retryAll.disabled = true;
    send({ type: "retry_failed" });
  });
  cancelAll.addEventListener("click", () => {
    cancelAll.disabled = true;
    send({ type: "cancel_all_queued" });
  });
  refresh.addEventListener("click", () => send({ type: "refresh" }));
  prev.addEventListener("click", () => {
    const v = view();
    send({ type: "view", offset: Math.max(0, v.offset - v.limit) });
  });
  next.addEventListener("click", () => {
    const v = view();
    send({ type: "view", offset: v.offset + v.limit });
  });
  size.addEventListener("change", () => send({ type: "view", limit: Number(size.value), offset: 0 }));

  model.on("change:rows", drawRows);
  model.on("change:counts", drawChips);
  model.on("change:workers", drawChips);
  model.on("change:total", drawPager);
  model.on("change:message", drawMessage);
  model.on("change:detail", drawRows);
  model.on("change:throughput", drawRate);
  model.on("change:vocabulary", drawAll);
  model.on("change:view", () => {
    drawHeader();
    drawChips();
    drawPager();
  });
  drawAll();

  // Tick running durations once a second, locally.
  const timer = setInterval(() => {
    const now = Date.now();
    for (const td of el.querySelectorAll("tr.cf-q-live td.cf-q-dur")) {
      const start = Number(td.dataset.start);
      if (start) td.textContent = formatDuration(Math.max(0, now - start * 1000));
    }
  }, 1000);
  return () => clearInterval(timer);
}

export default { render };
