// Tape timeline widget for casparian_nb: the thin anywidget wrapper over timeline_draw.js.
//
// The kernel sends `data` (the whole tape's payload), `state` and `position` (the scrubber's
// replayed queue), `title`, `reloadable`. Zoom asks the kernel for the view's level of detail:
// {type: "view", id, t0, t1, width} → custom message {type: "view", id, payload}. Scrubbing
// sends {type: "scrub", t | seq}; clicking a marker {type: "payload", seq} → {type: "payload",
// seq, event}. The two lines marked "cf:inline" are dropped when the kernel inlines
// timeline_draw.js ahead of this file (anywidget loads one module, without relative imports).

import { mountTimeline } from "./timeline_draw.js"; // cf:inline
export * from "./timeline_draw.js"; // cf:inline

function render({ model, el }) {
  let nextId = 0;
  const waiting = new Map(); // request id -> resolve
  const onCustom = (msg) => {
    const resolve = waiting.get(msg?.id);
    if (msg?.type === "view" && resolve) { waiting.delete(msg.id); resolve(msg.payload); }
    if (msg?.type === "payload" && waiting.has(`event:${msg.seq}`)) {
      waiting.get(`event:${msg.seq}`)(msg.event);
      waiting.delete(`event:${msg.seq}`);
    }
  };
  model.on("msg:custom", onCustom);
  const tl = mountTimeline(el, {
    payload: model.get("data"),
    title: model.get("title"),
    fetchView: (view, width) => new Promise((resolve) => {
      const id = ++nextId;
      waiting.set(id, resolve);
      model.send({ type: "view", id, t0: view.t0, t1: view.t1, width: Math.round(width) });
    }),
    fetchEvent: (seq) => new Promise((resolve) => {
      waiting.set(`event:${seq}`, resolve);
      model.send({ type: "payload", seq });
    }),
    scrub: (where) => model.send({ type: "scrub", ...where }),
    reload: model.get("reloadable") ? () => model.send({ type: "reload" }) : null,
  });
  const showState = () => tl.setState(model.get("state"), model.get("position"));
  model.on("change:data", () => tl.update(model.get("data")));
  model.on("change:state", showState);
  model.on("change:position", showState);
  model.on("change:title", () => tl.setTitle(model.get("title")));
  showState();
  return () => { model.off?.("msg:custom", onCustom); tl.destroy(); };
}

export default { render };
