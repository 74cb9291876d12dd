/**
 * The notebook that "New twin notebook" creates: a twin of the pump connected to the plant
 * (`twinbench plant`), started in the background, and a cell that looks at its state.
 */

const lines = (text: string): string[] =>
  text.split('\n').map((line, i, all) => (i < all.length - 1 ? line + '\n' : line));

const markdown = (text: string) => ({
  cell_type: 'markdown',
  metadata: {},
  source: lines(text)
});

const code = (text: string) => ({
  cell_type: 'code',
  execution_count: null,
  metadata: {},
  outputs: [],
  source: lines(text)
});

export const TWIN_NOTEBOOK = {
  nbformat: 4,
  nbformat_minor: 5,
  metadata: {
    kernelspec: { display_name: 'Python 3', language: 'python', name: 'python3' },
    language_info: { name: 'python' }
  },
  cells: [
    markdown(
      '# A new twin\n\n' +
        'A twin of a centrifugal pump, connected over OPC-UA to the simulated plant. Start the ' +
        'plant first in a terminal: `twinbench plant`. Change the model, the tag map and the ' +
        'sensor noise (`R`) to twin your own equipment.'
    ),
    code(
      'import os\n\n' +
        'import twinbench as tb\n\n' +
        'OPCUA_URL = os.environ.get("TWINBENCH_OPCUA_URL", "opc.tcp://127.0.0.1:4840/twinbench/plant")\n' +
        'MEASURED = ["speed", "flow_rate", "motor_temperature", "vibration", "current", "power"]\n' +
        'source = tb.connect(OPCUA_URL, {name: f"ns=2;s=Pump1.{name}" for name in MEASURED})\n' +
        'twin = tb.Twin(tb.models.pump(), source, max_step=0.5,\n' +
        '               R={"speed": 4.0, "flow_rate": 1.0, "motor_temperature": 0.09,\n' +
        '                  "vibration": 0.0025, "current": 0.04, "power": 0.04})\n' +
        'twin.start()  # runs in the background: the notebook stays usable'
    ),
    code(
      'import asyncio\n\n' +
        '# Data take a moment to arrive: wait for the first samples (up to 10 s) without\n' +
        '# blocking the notebook, then look at what the twin knows.\n' +
        'for _ in range(100):\n' +
        '    if twin.stats["samples"]:\n' +
        '        break\n' +
        '    await asyncio.sleep(0.1)\n' +
        'twin  # samples so far, alarms, latest values'
    ),
    code('twin.state  # the live window as an xarray.Dataset'),
    markdown(
      'The twin runs until the kernel stops, or until `await twin.stop()`. ' +
        'The toolbar button **App** opens this notebook as an app (Voila).'
    )
  ]
};
