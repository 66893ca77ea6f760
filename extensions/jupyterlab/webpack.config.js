// Merged by @jupyterlab/builder into its webpack config (package.json "webpackConfig").
// The timeline's drawing code has ONE source, the anywidget module inside the Python package;
// the extension imports it through this alias instead of keeping a copy.
const path = require('path');

module.exports = {
  resolve: {
    alias: {
      '@casparian/static': path.resolve(__dirname, '../../casparian_nb/notebook/static')
    }
  }
};
