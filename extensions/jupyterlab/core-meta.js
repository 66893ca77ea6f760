// @jupyterlab/builder reads <core-path>/package.json (JupyterLab's own package, for its
// singletons and shared versions); @jupyterlab/core-meta ships that file as core.package.json.
// Copying it into .core/ lets the build run from npm alone: no Python, no network at build time.
const fs = require('fs');
const path = require('path');

const out = path.join(__dirname, '.core');
fs.mkdirSync(out, { recursive: true });
fs.copyFileSync(
  require.resolve('@jupyterlab/core-meta/core.package.json'),
  path.join(out, 'package.json')
);
