// The tests' second broker: aedes (MQTT 3.1.1) on loopback, over plain TCP and WebSockets.
//
//   node tests/brokers/aedes.mjs --tcp 1883 --ws 8080 [--ws-path /mqtt]
//        [--wss 8443 --cert server.pem --key server.key]
//
// Started and killed by tests/aedes.py. aedes speaks MQTT; this file only opens the listeners and
// hands each connection (a socket, or a WebSocket wrapped as a stream) to `broker.handle`.
// Persistence is aedes' default, in memory: a restarted broker has forgotten every session.
//
// stdout, one line each: `aedes ready tcp=.. ws=.. wss=..` once every listener is up, then
// `connection-error <message>` (a client refused before its session began, e.g. an MQTT 5
// CONNECT), `client-ready <id> <tcp|ws|wss>` and `client-gone <id>`, which the tests read.

import { createServer as createHttpServer } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import { createServer as createTcpServer } from 'node:net'
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { Aedes } from 'aedes'
import { WebSocketServer, createWebSocketStream } from 'ws'

const HOST = '127.0.0.1' // loopback only: tests never listen on other interfaces

const { values: opts } = parseArgs({
  options: {
    tcp: { type: 'string' },
    ws: { type: 'string' },
    'ws-path': { type: 'string', default: '/mqtt' },
    wss: { type: 'string' },
    cert: { type: 'string' },
    key: { type: 'string' }
  }
})
if (!opts.tcp || !opts.ws || (opts.wss && !(opts.cert && opts.key))) {
  console.error('usage: aedes.mjs --tcp PORT --ws PORT [--ws-path P] [--wss PORT --cert F --key F]')
  process.exit(2)
}

const broker = await Aedes.createBroker()
broker.on('connectionError', (client, err) => console.log(`connection-error ${err.message}`))
broker.on('clientReady', (client) => console.log(`client-ready ${client.id} ${transport(client)}`))
broker.on('clientDisconnect', (client) => console.log(`client-gone ${client.id}`))

// A WebSocket client's `req` is its HTTP upgrade request; TCP clients have none.
function transport (client) {
  if (!client.req) return 'tcp'
  return client.req.socket.encrypted ? 'wss' : 'ws'
}

// MQTT over WebSockets (MQTT 3.1.1 §6): one binary stream per connection, subprotocol `mqtt`
// (`mqttv3.1` from old clients). ws would otherwise accept whatever the client offers first;
// a client offering neither gets no subprotocol back, which strict clients (browsers, ws) refuse.
// ws answers any path other than `--ws-path` with 400.
function mqttOverWebSockets (server) {
  const wss = new WebSocketServer({
    server,
    path: opts['ws-path'],
    handleProtocols: (offered) => ['mqtt', 'mqttv3.1'].find((p) => offered.has(p)) ?? false
  })
  wss.on('connection', (socket, req) => broker.handle(createWebSocketStream(socket), req))
  return server
}

function listen (server, port) {
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(Number(port), HOST, resolve)
  })
}

const servers = [createTcpServer(broker.handle), mqttOverWebSockets(createHttpServer())]
const ports = [opts.tcp, opts.ws]
if (opts.wss) {
  const tls = { cert: readFileSync(opts.cert), key: readFileSync(opts.key) }
  servers.push(mqttOverWebSockets(createHttpsServer(tls)))
  ports.push(opts.wss)
}
try {
  await Promise.all(servers.map((server, i) => listen(server, ports[i])))
} catch (err) {
  console.error(`aedes: cannot listen: ${err.message}`)
  process.exit(1)
}
console.log(`aedes ready tcp=${opts.tcp} ws=${opts.ws} wss=${opts.wss ?? ''}`)

// SIGTERM (stop): close the listeners and the broker, then exit. SIGKILL is the crash case.
process.once('SIGTERM', () => {
  for (const server of servers) server.close()
  broker.close(() => process.exit(0))
})
