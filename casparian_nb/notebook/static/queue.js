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
  return h("span", { class: `cf-q-badge cf-st-${cls}` }, label);
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
    h("div", { class: "cf-q-head" }, chips, h("span", { class: "cf-q-spacer" }), refresh, cancelAll),
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
    const workers = model.get("workers");
    if (workers) nodes.push(h("span", { class: "cf-q-workers" }, `${workers} worker${workers === 1 ? "" : "s"}`));
    chips.replaceChildren(...nodes);
    cancelAll.disabled = !counts[vocabulary.queued];
  }

  function drawRows() {
    const now = Date.now();
    const rows = model.get("rows") || [];
    const vocabulary = vocabularyOf(model);
    tbody.replaceChildren(...rows.map((r) => rowNode(r, now, vocabulary)));
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
    const b = e.target.closest("button.cf-q-cancel");
    if (!b) return;
    b.disabled = true; // the row's status changes only when the kernel says so
    b.textContent = "…";
    send({ type: "cancel", job_id: Number(b.dataset.id) });
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
