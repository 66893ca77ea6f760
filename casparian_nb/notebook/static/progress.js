// Progress bar of a blocking call (ctl.wait, cf.run, submit(wait=True)) for casparian_nb.
//
// Draws the kernel's traits: counts {done, failed, running, queued}, total, rate (jobs/s),
// eta_s (-1: unknown), elapsed_s, finished, label. Sends nothing back. The kernel syncs at
// most 10 times a second; the last state is a static line of final counts.

export const SEGMENTS = [["done", "cf-p-done"], ["failed", "cf-p-failed"], ["running", "cf-p-running"], ["queued", "cf-p-queued"]];

/** "12 done · 1 failed · 3 running · 40 queued of 56 · 3.1/s · ETA 14 s" */
export function progressText(m) {
  const c = m.counts || {};
  const parts = SEGMENTS.map(([k]) => `${c[k] ?? 0} ${k}`).join(" · ");
  const rate = `${(m.rate ?? 0).toFixed(1)}/s`;
  const tail = m.finished
    ? `in ${(m.elapsed_s ?? 0).toFixed(1)} s`
    : (m.eta_s ?? -1) >= 0 ? `ETA ${Math.round(m.eta_s)} s` : "ETA –";
  return `${parts} of ${m.total ?? 0} · ${rate} · ${tail}`;
}

function render({ model, el }) {
  el.classList.add("cf-progress");
  const label = document.createElement("span");
  label.className = "cf-p-label";
  const bar = document.createElement("div");
  bar.className = "cf-p-bar";
  const segs = SEGMENTS.map(([k, cls]) => {
    const s = document.createElement("div");
    s.className = `cf-p-seg ${cls}`;
    s.dataset.key = k;
    bar.append(s);
    return s;
  });
  const text = document.createElement("div");
  text.className = "cf-p-text";
  el.append(label, bar, text);
  const draw = () => {
    const m = { counts: model.get("counts"), total: model.get("total"), rate: model.get("rate"), eta_s: model.get("eta_s"), elapsed_s: model.get("elapsed_s"), finished: model.get("finished") };
    const total = Math.max(1, m.total || 0);
    SEGMENTS.forEach(([k], i) => { segs[i].style.width = `${(100 * ((m.counts || {})[k] ?? 0)) / total}%`; });
    label.textContent = model.get("label");
    text.textContent = progressText(m);
    el.classList.toggle("cf-p-finished", !!m.finished);
  };
  for (const k of ["counts", "total", "rate", "eta_s", "elapsed_s", "finished", "label"]) model.on(`change:${k}`, draw);
  draw();
}

export default { render };
