import { Widget } from '@lumino/widgets';
import { postAPI, requestAPI } from './api';

/** One sentinel as `GET /casparian/api/sentinels` lists it. */
export interface ISentinel {
  home: string;
  running: boolean;
  pid: number | null;
  workers: { worker_id: string; status: string; slots?: number }[];
  counts: Record<string, number>;
  tape: string | null;
  error: string | null;
}

/** One job row of `GET /casparian/api/jobs`. */
export interface IJob {
  job_id: number;
  status: string;
  plugin_name: string | null;
  input_path: string | null;
  worker_id: string | null;
  cancel_requested: boolean;
  active: boolean;
}

/** What the panel needs from the application (kept out of this module for testability). */
export interface ISidebarActions {
  openTape(path: string): void;
  insertAttachCell(home: string): Promise<boolean>;
}

const POLL_MS = 500; // ≤ 2 polls a second

function el(tag: string, attrs: Record<string, string> = {}, ...children: (Node | string)[]): HTMLElement {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

/**
 * The Casparian left panel: the sentinels serving homes visible to the server, and the live
 * job queue of the selected one with cancel/retry. Everything goes through the server
 * extension (which uses the signed control API); the browser never touches sentinel sockets.
 */
export class CasparianPanel extends Widget {
  private selected: string | null = null;
  private sentinels: ISentinel[] = [];
  private jobs: IJob[] = [];
  private status = '';
  private timer: number | null = null;
  private busy = false;
  private listNode = el('div', { class: 'cf-sb-list' });
  private queueNode = el('div', { class: 'cf-sb-queue' });
  private statusNode = el('div', { class: 'cf-sb-small' });

  constructor(private actions: ISidebarActions) {
    super();
    this.id = 'casparian-sidebar';
    this.addClass('cf-sidebar');
    this.title.caption = 'Casparian';
    const refresh = el('button', { class: 'jp-Button cf-sb-refresh', title: 'refresh now' }, 'refresh');
    refresh.addEventListener('click', () => void this.poll());
    this.node.append(el('h2', {}, 'Casparian sentinels'), refresh, this.statusNode, this.listNode,
      this.queueNode);
  }

  protected onAfterShow(): void {
    this.startPolling();
  }

  protected onAfterAttach(): void {
    if (this.isVisible) this.startPolling(); // a collapsed side panel does not poll
  }

  protected onBeforeDetach(): void {
    this.stopPolling();
  }

  protected onBeforeHide(): void {
    this.stopPolling();
  }

  private startPolling(): void {
    if (this.timer === null) {
      void this.poll();
      this.timer = window.setInterval(() => void this.poll(), POLL_MS);
    }
  }

  private stopPolling(): void {
    if (this.timer !== null) window.clearInterval(this.timer);
    this.timer = null;
  }

  /** One refresh: the sentinel list, then the selected sentinel's jobs (skipped while busy). */
  async poll(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      const r = await requestAPI<{ sentinels: ISentinel[] }>('sentinels');
      this.sentinels = r.sentinels;
      const running = this.sentinels.filter((s) => s.running);
      if (!this.selected || !this.sentinels.some((s) => s.home === this.selected)) {
        this.selected = running[0]?.home ?? null;
      }
      const sel = this.sentinels.find((s) => s.home === this.selected);
      this.jobs = sel?.running
        ? (await requestAPI<{ jobs: IJob[] }>('jobs', {}, { home: sel.home })).jobs
        : [];
      this.status = `updated ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      this.status = `error: ${(e as Error).message}`;
    } finally {
      this.busy = false;
    }
    this.render();
  }

  private render(): void {
    this.statusNode.textContent = this.status;
    this.listNode.replaceChildren(
      ...(this.sentinels.length ? this.sentinels.map((s) => this.renderSentinel(s))
        : [el('div', { class: 'cf-sb-small' }, 'no sentinel found (start one with "Casparian: start sentinel in this folder")')])
    );
    const sel = this.sentinels.find((s) => s.home === this.selected);
    this.queueNode.replaceChildren(...(sel ? this.renderQueue(sel) : []));
  }

  private renderSentinel(s: ISentinel): HTMLElement {
    // per-status counts; `total` last, `cancel_requested` read as "aborting"
    const { total, cancel_requested: aborting, ...perStatus } = s.counts;
    const counts = [...Object.entries(perStatus).filter(([, n]) => n).map(([k, n]) => `${k} ${n}`),
      ...(aborting ? [`aborting ${aborting}`] : []), ...(total ? [`total ${total}`] : [])].join(' · ');
    const node = el('div', { class: `cf-sb-sentinel${s.home === this.selected ? ' cf-selected' : ''}`, 'data-home': s.home },
      el('div', { class: 'cf-sb-home' }, s.home),
      el('div', { class: s.running ? 'cf-sb-running' : 'cf-sb-stopped' },
        s.running ? `running (pid ${s.pid}) · ${s.workers.length} worker(s)` : 'stopped'),
      el('div', { class: 'cf-sb-small' }, counts || 'no jobs'),
      ...(s.error ? [el('div', { class: 'cf-sb-error' }, s.error)] : []));
    node.addEventListener('click', () => {
      this.selected = s.home;
      void this.poll();
    });
    return node;
  }

  private renderQueue(s: ISentinel): HTMLElement[] {
    const tape = el('button', { class: 'jp-Button cf-sb-open-tape' }, 'open session tape');
    if (s.tape) tape.addEventListener('click', () => this.actions.openTape(s.tape!));
    else tape.setAttribute('disabled', 'true');
    const attach = el('button', { class: 'jp-Button cf-sb-attach' }, 'Insert attach cell');
    attach.addEventListener('click', () => {
      void this.actions.insertAttachCell(s.home).then((ok) => {
        if (!ok) this.flash('open a notebook first');
      });
    });
    const rows = this.jobs.map((j) => this.renderJob(s, j));
    return [
      el('h2', {}, 'Job queue'),
      tape, attach,
      rows.length
        ? el('table', { class: 'cf-sb-jobs' },
          el('tr', {}, el('th', {}, 'job'), el('th', {}, 'status'), el('th', {}, 'plugin'), el('th', {}, '')),
          ...rows)
        : el('div', { class: 'cf-sb-small' }, s.running ? 'no jobs' : 'sentinel stopped')
    ];
  }

  private renderJob(s: ISentinel, j: IJob): HTMLElement {
    const active = j.active; // queued or on a worker (decided by the server)
    const status = j.cancel_requested && active ? 'aborting…' : j.status;
    const actions = el('td', {});
    if (active && !j.cancel_requested) {
      const cancel = el('button', { class: 'jp-Button cf-sb-cancel', 'data-job': String(j.job_id) }, 'cancel');
      cancel.addEventListener('click', () => void this.act('cancel', s.home, j, cancel));
      actions.append(cancel);
    }
    if (j.status === 'failed' || j.status === 'aborted') {
      const retry = el('button', { class: 'jp-Button cf-sb-retry', 'data-job': String(j.job_id) }, 'retry');
      retry.addEventListener('click', () => void this.act('retry', s.home, j, retry));
      actions.append(retry);
    }
    return el('tr', { class: 'cf-sb-job', 'data-job': String(j.job_id), 'data-status': j.status },
      el('td', {}, String(j.job_id)), el('td', { class: 'cf-sb-status' }, status),
      el('td', { title: j.input_path ?? '' }, j.plugin_name ?? ''), actions);
  }

  private async act(what: 'cancel' | 'retry', home: string, job: IJob, button: HTMLElement): Promise<void> {
    button.setAttribute('disabled', 'true');
    try {
      await postAPI(what, { home, job_id: job.job_id });
      if (what === 'cancel') {
        job.cancel_requested = true; // "aborting…" until the sentinel confirms ABORTED
        this.render();
      } else {
        job.status = 'queued'; // a new attempt, until the next poll says where it is
        job.active = true;
        this.render();
      }
    } catch (e) {
      this.flash(`${what} ${job.job_id}: ${(e as Error).message}`);
    }
    void this.poll();
  }

  private flash(text: string): void {
    this.status = text;
    this.statusNode.textContent = text;
  }
}
