// Start kinesalite on 127.0.0.1:PORT (argv[2]) with no artificial stream delays.
// kinesalite's CLI has no host flag, so tests start it through this script.
'use strict';
const path = require('path');
const kinesalite = require(path.join(__dirname, '..', 'node_modules', 'kinesalite'));

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node kinesalite.js PORT');
  process.exit(2);
}

const server = kinesalite({
  createStreamMs: 0,
  deleteStreamMs: 0,
  updateStreamMs: 0,
  shardLimit: 1000,
});
server.on('error', (err) => {
  console.error(`kinesalite: ${err.message}`);
  process.exit(1);
});
server.listen(port, '127.0.0.1', () => {
  console.error(`kinesalite listening on 127.0.0.1:${port}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => server.close(() => process.exit(0)));
}
