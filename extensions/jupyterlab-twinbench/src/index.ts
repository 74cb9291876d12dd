/**
 * twinbench in JupyterLab.
 *
 * - Launcher cards: one per tutorial (`NN_*.ipynb` in `notebooks/`, or at the root of the server)
 *   and "New twin notebook", a notebook created from a template.
 * - "Open as twinbench app": a command (palette, notebook toolbar) that opens the current
 *   notebook in Voila, with twinbench's template (and its dark theme under a dark JupyterLab
 *   theme), in a new tab.
 * - A status-bar item with the twins running in the current notebook's kernel.
 */

import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, IThemeManager, ToolbarButton } from '@jupyterlab/apputils';
import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { DocumentRegistry } from '@jupyterlab/docregistry';
import { ILauncher } from '@jupyterlab/launcher';
import {
  INotebookModel,
  INotebookTracker,
  NotebookPanel
} from '@jupyterlab/notebook';
import { Contents, Kernel } from '@jupyterlab/services';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';
import { IDisposable } from '@lumino/disposable';
import { Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import iconSvg from '../style/icon.svg';
import { TWIN_NOTEBOOK } from './template';

const CATEGORY = 'twinbench';

namespace CommandIDs {
  export const newTwinNotebook = 'twinbench:new-twin-notebook';
  export const openTutorial = 'twinbench:open-tutorial';
  export const openAsApp = 'twinbench:open-as-app';
}

export const twinbenchIcon = new LabIcon({
  name: 'twinbench:icon',
  svgstr: iconSvg
});

// How words of the tutorials' file names are written in their titles.
const WORDS: { [word: string]: string } = { opcua: 'OPC-UA', mqtt: 'MQTT', whatif: 'what-if' };

/** "01_quickstart.ipynb" -> "1. Quickstart"; "04_connecting_mqtt.ipynb" -> "4. Connecting MQTT". */
export function tutorialTitle(name: string): string {
  const match = /^(\d+)_(.*)\.ipynb$/.exec(name);
  if (!match) {
    return name;
  }
  const words = match[2]
    .split('_')
    .map(word => WORDS[word] ?? word)
    .join(' ');
  return `${Number(match[1])}. ${words.charAt(0).toUpperCase()}${words.slice(1)}`;
}

/** The tutorial notebooks the server has: in `notebooks/`, else at the root. */
async function findTutorials(contents: Contents.IManager): Promise<string[]> {
  for (const dir of ['notebooks', '']) {
    let listing: Contents.IModel;
    try {
      listing = await contents.get(dir, { content: true });
    } catch {
      continue; // no such directory
    }
    const items = (listing.content as Contents.IModel[]) ?? [];
    const tutorials = items
      .filter(item => item.type === 'notebook' && /^\d+_.*\.ipynb$/.test(item.name))
      .map(item => item.path)
      .sort();
    if (tutorials.length) {
      return tutorials;
    }
  }
  return [];
}

/** The Voila template twinbench ships (share/jupyter/voila/templates/twinbench). */
export const VOILA_TEMPLATE = 'twinbench';

/**
 * The URL at which Voila renders a notebook as a twinbench app (its server extension runs
 * inside JupyterLab's): `<base>/voila/render/<path>?template=twinbench`, plus `&theme=dark`
 * when JupyterLab's theme is a dark one (the template's default is light).
 */
export function voilaUrl(path: string, options: { dark?: boolean } = {}): string {
  const encoded = path.split('/').map(encodeURIComponent).join('/');
  const query: { [key: string]: string } = { template: VOILA_TEMPLATE };
  if (options.dark) {
    query.theme = 'dark';
  }
  return (
    URLExt.join(PageConfig.getBaseUrl(), 'voila/render', encoded) +
    URLExt.objectToQueryString(query)
  );
}

/** Whether JupyterLab shows a dark theme: the theme manager's word, else the page's. */
function isDarkTheme(themeManager: IThemeManager | null): boolean {
  const theme = themeManager?.theme;
  if (themeManager && theme) {
    return !themeManager.isLight(theme);
  }
  return document.body.dataset.jpThemeLight === 'false';
}

// -- the status bar ----------------------------------------------------------------------------

/** What twinbench.twin.running_twins() returns, per twin. */
interface IRunningTwin {
  name: string;
  samples: number;
  errors: number;
  alarms: string[];
}

// Evaluated in the kernel as a silent user expression (no history, no execution count). It
// never imports twinbench: a kernel that has not imported it runs no twin. The list comes back
// as base64 JSON, so that the text/plain repr (a quoted Python string) needs no unescaping.
const RUNNING_TWINS_EXPR =
  "__import__('base64').b64encode(__import__('json').dumps((lambda m: " +
  "m.running_twins() if hasattr(m, 'running_twins') else [])(" +
  "__import__('sys').modules.get('twinbench.twin'))).encode()).decode()";

const POLL_MS = 3000;

async function queryRunningTwins(kernel: Kernel.IKernelConnection): Promise<IRunningTwin[] | null> {
  const future = kernel.requestExecute(
    {
      code: '',
      silent: true,
      store_history: false,
      allow_stdin: false,
      stop_on_error: false,
      user_expressions: { twinbench: RUNNING_TWINS_EXPR }
    },
    true
  );
  const reply = await future.done;
  const content = reply.content as any;
  const result = content?.user_expressions?.twinbench;
  if (!result || result.status !== 'ok') {
    return null;
  }
  const text = String(result.data?.['text/plain'] ?? '').replace(/^'|'$/g, '');
  return JSON.parse(atob(text)) as IRunningTwin[];
}

/** "2 twins: pump (1520 samples), fan (310 samples, alarm: vibration)". */
export function describeTwins(twins: IRunningTwin[]): { label: string; title: string } {
  const label = `${twins.length} ${twins.length === 1 ? 'twin' : 'twins'}`;
  const parts = twins.map(t => {
    const details = [`${t.samples} samples`];
    if (t.errors) {
      details.push(`${t.errors} errors`);
    }
    if (t.alarms.length) {
      details.push(`alarms: ${t.alarms.join(', ')}`);
    }
    return `${t.name} (${details.join(', ')})`;
  });
  const title = twins.length
    ? `twins running in this kernel: ${parts.join('; ')}`
    : 'no twin running in this kernel';
  return { label, title };
}

/** The status-bar item: polls the current notebook's kernel every few seconds while it is idle. */
class TwinStatus extends Widget {
  constructor(private tracker: INotebookTracker) {
    super();
    this.addClass('jp-twinbench-status');
    this.node.textContent = '';
    this._timer = window.setInterval(() => void this.refresh(), POLL_MS);
    tracker.currentChanged.connect(() => {
      this.render(null);
      void this.refresh();
    });
  }

  dispose(): void {
    window.clearInterval(this._timer);
    super.dispose();
  }

  async refresh(): Promise<void> {
    const panel = this.tracker.currentWidget;
    const kernel = panel?.sessionContext.session?.kernel;
    // Only an idle kernel is asked: a busy one would queue the request behind the user's cells.
    if (!kernel || kernel.status !== 'idle' || this._pending) {
      if (!kernel) {
        this.render(null);
      }
      return;
    }
    this._pending = true;
    try {
      const twins = await queryRunningTwins(kernel);
      if (this.tracker.currentWidget === panel) {
        this.render(twins);
      }
    } catch (err) {
      console.debug('twinbench: could not ask the kernel for its twins', err);
    } finally {
      this._pending = false;
    }
  }

  private render(twins: IRunningTwin[] | null): void {
    if (twins === null) {
      this.node.textContent = '';
      this.node.title = '';
      this.removeClass('jp-mod-alarm');
      return;
    }
    const { label, title } = describeTwins(twins);
    this.node.textContent = label;
    this.node.title = title;
    this.toggleClass('jp-mod-alarm', twins.some(t => t.alarms.length > 0));
  }

  private _timer: number;
  private _pending = false;
}

// -- the toolbar button ------------------------------------------------------------------------

class OpenAsAppButton
  implements DocumentRegistry.IWidgetExtension<NotebookPanel, INotebookModel>
{
  constructor(private app: JupyterFrontEnd) {}

  createNew(panel: NotebookPanel): IDisposable {
    const button = new ToolbarButton({
      className: 'jp-twinbench-open-as-app',
      icon: twinbenchIcon,
      label: 'App',
      tooltip: 'Open as twinbench app (Voila)',
      onClick: () => {
        void this.app.commands.execute(CommandIDs.openAsApp);
      }
    });
    panel.toolbar.insertAfter('cellType', 'twinbench-open-as-app', button);
    return button;
  }
}

// -- the plugin --------------------------------------------------------------------------------

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyterlab-twinbench:plugin',
  description:
    'twinbench: tutorials and a new twin notebook in the launcher, "Open as twinbench app", ' +
    'the twins running in the kernel in the status bar.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ILauncher, ICommandPalette, IStatusBar, IThemeManager],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    launcher: ILauncher | null,
    palette: ICommandPalette | null,
    statusBar: IStatusBar | null,
    themeManager: IThemeManager | null
  ) => {
    const { commands, serviceManager } = app;
    const contents = serviceManager.contents;

    commands.addCommand(CommandIDs.newTwinNotebook, {
      label: 'New twin notebook',
      caption: 'A new notebook with a twin of the pump connected to the plant',
      icon: args => (args['isPalette'] ? undefined : twinbenchIcon),
      execute: async args => {
        const cwd = typeof args['cwd'] === 'string' ? args['cwd'] : '';
        const model = await contents.newUntitled({ path: cwd, type: 'notebook' });
        const name = model.name.replace(/^Untitled/, 'twin');
        const path = cwd ? `${cwd}/${name}` : name;
        await contents.save(path, {
          type: 'notebook',
          format: 'json',
          content: TWIN_NOTEBOOK
        });
        if (path !== model.path) {
          await contents.delete(model.path);
        }
        return commands.execute('docmanager:open', { path, factory: 'Notebook' });
      }
    });

    commands.addCommand(CommandIDs.openTutorial, {
      label: args => tutorialTitle(String(args['path'] ?? '').split('/').pop() ?? ''),
      caption: args => `Open the tutorial ${args['path']}`,
      icon: twinbenchIcon,
      execute: args =>
        commands.execute('docmanager:open', { path: String(args['path']), factory: 'Notebook' })
    });

    commands.addCommand(CommandIDs.openAsApp, {
      label: 'Open as twinbench app',
      caption: 'Open the current notebook as an app (rendered by Voila) in a new tab',
      icon: args => (args['isPalette'] ? undefined : twinbenchIcon),
      isEnabled: () => tracker.currentWidget !== null,
      execute: async () => {
        const panel = tracker.currentWidget;
        if (!panel) {
          return;
        }
        // Opened now, within the click, so that popup blockers allow it; pointed at Voila once
        // the notebook is saved (Voila renders the file on disk).
        const win = window.open('', '_blank');
        if (panel.context.model.dirty) {
          await panel.context.save();
        }
        const url = voilaUrl(panel.context.path, { dark: isDarkTheme(themeManager) });
        if (win) {
          win.location.href = url;
        } else {
          window.open(url, '_blank');
        }
      }
    });

    if (palette) {
      for (const command of [CommandIDs.newTwinNotebook, CommandIDs.openAsApp]) {
        palette.addItem({ command, category: CATEGORY, args: { isPalette: true } });
      }
    }

    app.docRegistry.addWidgetExtension('Notebook', new OpenAsAppButton(app));

    if (launcher) {
      launcher.add({
        command: CommandIDs.newTwinNotebook,
        category: CATEGORY,
        rank: 0
      });
      void findTutorials(contents).then(paths =>
        paths.forEach((path, rank) =>
          launcher.add({
            command: CommandIDs.openTutorial,
            args: { path },
            category: CATEGORY,
            rank: rank + 1
          })
        )
      );
    }

    if (statusBar) {
      const status = new TwinStatus(tracker);
      const activeStateChanged = new Signal<TwinStatus, void>(status);
      tracker.currentChanged.connect(() => activeStateChanged.emit());
      statusBar.registerStatusItem('jupyterlab-twinbench:running-twins', {
        item: status,
        align: 'left',
        rank: 5,
        isActive: () => tracker.currentWidget !== null,
        activeStateChanged
      });
    }
  }
};

export default plugin;
