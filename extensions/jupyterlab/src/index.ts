/**
 * casparian-nb: casparian_nb inside JupyterLab.
 *
 * - `.tape` files open as timelines (lanes, bars, markers, scrubber, explain summary, errors)
 *   drawn by the notebook widget's own `timeline.js`, fed by the server extension, no kernel;
 * - a "Casparian" left panel: sentinels, the live job queue of one, cancel, its session tape,
 *   "Insert attach cell";
 * - commands "Casparian: open tape" and "Casparian: start sentinel in this folder".
 */
import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, InputDialog, Notification } from '@jupyterlab/apputils';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { LabIcon } from '@jupyterlab/ui-components';
import { postAPI } from './api';
import { CasparianPanel } from './sidebar';
import { TapeViewerFactory } from './tapeview';

const FACTORY = 'Casparian Tape';
const FILE_TYPE = 'casparian-tape';

namespace CommandIDs {
  export const openTape = 'casparian:open-tape';
  export const startSentinel = 'casparian:start-sentinel';
}

const tapeIcon = new LabIcon({
  name: 'casparian-nb:tape',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><g class="jp-icon3" fill="#616161">' +
    '<rect x="2" y="5" width="12" height="3" rx="1"/><rect x="7" y="10" width="14" height="3" rx="1"/>' +
    '<rect x="4" y="15" width="9" height="3" rx="1"/></g></svg>'
});

/** Python code of the attach cell for `home` (a Python string literal, JSON-escaped). */
export function attachCellSource(home: string): string {
  return `import casparian_nb as cf\nctl = cf.attach(home=${JSON.stringify(home)})\nctl`;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'casparian-nb:plugin',
  description: 'A .tape timeline viewer and a Casparian sidebar for casparian_nb.',
  autoStart: true,
  requires: [IDefaultFileBrowser],
  optional: [ICommandPalette, INotebookTracker, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    browser: IDefaultFileBrowser,
    palette: ICommandPalette | null,
    notebooks: INotebookTracker | null,
    restorer: ILayoutRestorer | null
  ) => {
    app.docRegistry.addFileType({
      name: FILE_TYPE,
      displayName: 'Casparian tape',
      extensions: ['.tape'],
      mimeTypes: ['application/x-ndjson'],
      contentType: 'file',
      fileFormat: 'text',
      icon: tapeIcon
    });
    const factory = new TapeViewerFactory({
      name: FACTORY,
      label: 'Tape timeline',
      fileTypes: [FILE_TYPE],
      defaultFor: [FILE_TYPE],
      readOnly: true
    });
    app.docRegistry.addWidgetFactory(factory);

    const openTape = (path: string) =>
      app.commands.execute('docmanager:open', { path, factory: FACTORY });

    const insertAttachCell = async (home: string): Promise<boolean> => {
      const panel = notebooks?.currentWidget;
      if (!panel) return false;
      await panel.context.ready;
      NotebookActions.insertBelow(panel.content);
      const cell = panel.content.activeCell;
      if (!cell) return false;
      cell.model.sharedModel.setSource(attachCellSource(home));
      app.shell.activateById(panel.id);
      return true;
    };

    const sidebar = new CasparianPanel({ openTape: (p) => void openTape(p), insertAttachCell });
    sidebar.title.icon = tapeIcon;
    app.shell.add(sidebar, 'left', { rank: 900 });
    restorer?.add(sidebar, sidebar.id);

    app.commands.addCommand(CommandIDs.openTape, {
      label: 'Casparian: open tape',
      caption: 'Open a .tape file as a timeline',
      execute: async (args) => {
        let path = args.path as string | undefined;
        if (!path) {
          const selected = browser.selectedItems().next();
          const item = selected && !selected.done ? selected.value : undefined;
          const guess = item?.path.endsWith('.tape') ? item.path : '';
          const answer = await InputDialog.getText({ title: 'Open tape (path from the server root)', text: guess });
          if (!answer.button.accept || !answer.value) return;
          path = answer.value;
        }
        return openTape(path);
      }
    });
    app.commands.addCommand(CommandIDs.startSentinel, {
      label: 'Casparian: start sentinel in this folder',
      caption: 'Start a sentinel and workers whose home is the file browser folder',
      execute: async () => {
        const folder = browser.model.path;
        try {
          const r = await postAPI<{ home: string; pid: number }>('start', { path: folder });
          Notification.success(`casparian: sentinel pid ${r.pid} serving ${r.home}`, { autoClose: 5000 });
          app.shell.activateById(sidebar.id);
          void sidebar.poll();
        } catch (e) {
          Notification.error(`casparian: ${(e as Error).message}`, { autoClose: 8000 });
        }
      }
    });
    for (const command of [CommandIDs.openTape, CommandIDs.startSentinel]) {
      palette?.addItem({ command, category: 'Casparian' });
    }
  }
};

export default plugin;
