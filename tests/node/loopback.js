// Preload (node -r) that keeps every listening socket on 127.0.0.1.
// kinesis-mock binds 0.0.0.0 and has no host option; tests must not expose it.
'use strict';
const net = require('net');

const original = net.Server.prototype.listen;

function isAddress(host) {
  return typeof host === 'string' || host === undefined || host === null;
}

net.Server.prototype.listen = function listen(...args) {
  const first = args[0];
  if (first !== null && typeof first === 'object' && !Array.isArray(first) && !(first instanceof net.Server)) {
    // listen(options[, cb]): a path (unix socket) is left alone.
    if (first.path === undefined) {
      args[0] = Object.assign({}, first, { host: '127.0.0.1' });
    }
  } else if (typeof first === 'number' || (typeof first === 'string' && /^\d+$/.test(first))) {
    // listen(port[, host][, backlog][, cb])
    if (args.length >= 2 && isAddress(args[1]) && typeof args[1] !== 'function') {
      args[1] = '127.0.0.1';
    } else {
      args.splice(1, 0, '127.0.0.1');
    }
  }
  return original.apply(this, args);
};
