import { ABCWidgetFactory, DocumentRegistry, DocumentWidget } from '@jupyterlab/docregistry';
import { Widget } from '@lumino/widgets';
import timeline, { TimelineModel } from '@casparian/static/timeline.js';
import { requestAPI } from './api';

/** What `GET /casparian/api/tape` answers (see casparian_nb/serverext/_tapes.py). */
export interface ITapeDocument {
  title: string;
  validation: { valid: boolean; error_count: number; warning_count: number;
    issues: { line: number; kind: string; message: string; severity: string }[] };
  explain_text: string;
  data: Record<string, unknown> | null;
  state?: Record<string, unknown>;
  position?: Record<string, unknown>;
  replay_error?: string;
}

/**
 * The timeline widget's model API (get / on / send) served by the server extension instead
 * of a kernel: the same `timeline.js` draws in both places. The messages it sends (scrub,
 * payload, reload) become GET requests; the answers set `state`/`position` or come back as
 * the `msg:custom` payload message, exactly as the kernel side would answer them.
 */
export class ServerTimelineModel implements TimelineModel {
  private values: Record<string, any> = {};
  private handlers = new Map<string, ((value?: any) => void)[]>();

  constructor(private path: string, doc: ITapeDocument, private onError: (e: Error) => void) {
    this.values = { data: doc.data, state: doc.state, position: doc.position,
      title: doc.title, reloadable: true };
  }

  get(name: string): any {
    return this.values[name];
  }

  on(event: string, callback: (value?: any) => void): void {
    this.handlers.set(event, [...(this.handlers.get(event) ?? []), callback]);
  }

  set(name: string, value: unknown): void {
    this.values[name] = value;
    this.emit(`change:${name}`, value);
  }

  private emit(event: string, value?: unknown): void {
    for (const cb of this.handlers.get(event) ?? []) cb(value);
  }

  send(message: Record<string, unknown>): void {
    this.answer(message).catch(this.onError);
  }

  private async answer(message: Record<string, unknown>): Promise<void> {
    const path = this.path;
    if (message.type === 'scrub') {
      const r = await requestAPI<{ state: unknown; position: unknown }>('tape/state', {},
        { path, t: message.t as number | undefined, seq: message.seq as number | undefined });
      this.set('position', r.position);
      this.set('state', r.state);
    } else if (message.type === 'payload') {
      const r = await requestAPI<{ seq: number; event: unknown }>('tape/event', {},
        { path, seq: message.seq as number });
      this.emit('msg:custom', { type: 'payload', seq: r.seq, event: r.event });
    } else if (message.type === 'reload') {
      const doc = await requestAPI<ITapeDocument>('tape', {}, { path });
      this.set('data', doc.data);
      this.set('position', doc.position);
      this.set('state', doc.state);
    }
  }
}

/** The body of a `.tape` document: the explain summary, validation errors, the timeline. */
export class TapeView extends Widget {
  private cleanup: (() => void) | null = null;

  constructor(private context: DocumentRegistry.Context) {
    super();
    this.addClass('cf-tape-view');
    this.node.textContent = 'loading tape…';
    void context.ready.then(() => this.load());
  }

  async load(): Promise<void> {
    const path = this.context.localPath ?? this.context.path;
    let doc: ITapeDocument;
    try {
      doc = await requestAPI<ITapeDocument>('tape', {}, { path });
    } catch (e) {
      this.showError(`cannot open ${path}: ${(e as Error).message}`);
      return;
    }
    this.cleanup?.();
    this.node.replaceChildren();
    if (doc.explain_text) {
      const summary = document.createElement('pre');
      summary.className = 'cf-tape-summary';
      summary.textContent = doc.explain_text;
      this.node.append(summary);
    }
    const issues = doc.validation.issues;
    if (issues.length || doc.replay_error) {
      const head = document.createElement('div');
      head.className = 'cf-tape-heading cf-tape-errors';
      head.textContent = doc.validation.valid
        ? `${doc.validation.warning_count} warning(s)`
        : `damaged tape: ${doc.validation.error_count} error(s)`;
      const list = document.createElement('ul');
      list.className = 'cf-tape-errors';
      for (const i of issues) {
        const li = document.createElement('li');
        li.textContent = `line ${i.line}: ${i.severity === 'warning' ? 'warning: ' : ''}${i.message}`;
        list.append(li);
      }
      if (doc.replay_error) {
        const li = document.createElement('li');
        li.textContent = `no timeline: ${doc.replay_error}`;
        list.append(li);
      }
      this.node.append(head, list);
    }
    if (doc.data) {
      const host = document.createElement('div');
      this.node.append(host);
      const model = new ServerTimelineModel(path, doc, (e) => this.showError(e.message, false));
      this.cleanup = timeline.render({ model, el: host });
    }
  }

  private showError(text: string, replace = true): void {
    const div = document.createElement('div');
    div.className = 'cf-tape-errors';
    div.textContent = text;
    if (replace) this.node.replaceChildren(div);
    else this.node.prepend(div);
  }

  dispose(): void {
    this.cleanup?.();
    this.cleanup = null;
    super.dispose();
  }
}

/** Opens `.tape` files as timelines (read-only; "Open with → Editor" still shows the text). */
export class TapeViewerFactory extends ABCWidgetFactory<DocumentWidget<TapeView>> {
  protected createNewWidget(context: DocumentRegistry.Context): DocumentWidget<TapeView> {
    const widget = new DocumentWidget({ content: new TapeView(context), context });
    widget.title.caption = `tape timeline: ${context.path}`;
    return widget;
  }
}
