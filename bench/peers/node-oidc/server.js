// Reference peer for the tokensmith benchmark: node-oidc-provider as an OAuth 2.0 token server with
// self_signed_tls_client_auth and certificate-bound access tokens (RFC 8705), served by Node's
// https server with requestCert. See ../README.md.
//
//   node server.js [--port 8443] [--cert server.crt] [--key server.key] [--clients clients.json]
//
// Environment (a flag wins over its variable):
//   PORT            listening port on 127.0.0.1 (0 picks a free one; default 8443)
//   TLS_CERT        server certificate (PEM)
//   TLS_KEY         server private key (PEM)
//   CLIENTS_FILE    JSON array of oidc-provider client metadata (gen_clients.py writes one)
//   BASIC_CLIENT_ID, BASIC_CLIENT_SECRET
//                   the client_secret_basic client, also allowed to introspect
//                   (default bench-basic / bench-basic-secret)
//   ADAPTER         memory (default: oidc-provider's own in-memory adapter, an LRU of 1000
//                   entries) or map (./map_adapter.js: unbounded, entries kept until expiry)
//   WARM_CLIENTS=1  build every client object at startup instead of on first use
//   VERBOSE=1       keep oidc-provider's startup notices (silenced by default)
//
// stdout gets exactly one line, "ready https://127.0.0.1:PORT", once the server accepts
// requests; stderr gets one "startup ..." line with the client count, times and RSS.
// SIGTERM or SIGINT closes the listener and every connection, then exits 0.

import { readFileSync } from 'node:fs';
import * as https from 'node:https';
import { generateKeyPairSync } from 'node:crypto';
import { parseArgs } from 'node:util';

const t0 = process.hrtime.bigint();
const ms = (since) => Number(process.hrtime.bigint() - since) / 1e6;

// oidc-provider prints its notices with console.info/console.warn, each with this prefix and
// at most once per kind (startup, or the first request that hits a default helper). Drop them
// unless VERBOSE=1 so that no request ever pays for logging.
if (!process.env.VERBOSE) {
  for (const level of ['info', 'warn']) {
    const original = console[level].bind(console);
    console[level] = (...args) => {
      if (typeof args[0] === 'string' && args[0].includes('oidc-provider ')) return;
      original(...args);
    };
  }
}

// Imported after the filter: the module warns about the runtime as it loads.
const { Provider } = await import('oidc-provider');

const { values: opts } = parseArgs({
  options: {
    port: { type: 'string' },
    cert: { type: 'string' },
    key: { type: 'string' },
    clients: { type: 'string' },
  },
});
const port = Number(opts.port ?? process.env.PORT ?? 8443);
const certFile = opts.cert ?? process.env.TLS_CERT;
const keyFile = opts.key ?? process.env.TLS_KEY;
const clientsFile = opts.clients ?? process.env.CLIENTS_FILE;
const basicId = process.env.BASIC_CLIENT_ID || 'bench-basic';
const basicSecret = process.env.BASIC_CLIENT_SECRET || 'bench-basic-secret';
const adapterName = process.env.ADAPTER || 'memory';
if (!certFile || !keyFile) {
  console.error('server.js: give the server certificate and key (--cert/--key or TLS_CERT/TLS_KEY)');
  process.exit(2);
}
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`server.js: bad port ${opts.port ?? process.env.PORT}`);
  process.exit(2);
}

const tLoad = process.hrtime.bigint();
const mtlsClients = clientsFile ? JSON.parse(readFileSync(clientsFile, 'utf8')) : [];
if (!Array.isArray(mtlsClients)) {
  console.error(`server.js: ${clientsFile} must hold a JSON array of client metadata`);
  process.exit(2);
}
const loadMs = ms(tLoad);

const clients = [
  ...mtlsClients,
  {
    client_id: basicId,
    client_secret: basicSecret,
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  },
];

// The provider's own signing key (unused by opaque tokens, but without one it generates a
// development key and warns). EC P-256 like the TLS keys.
const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const signingJwk = { ...privateKey.export({ format: 'jwk' }), kid: 'bench-sig', use: 'sig', alg: 'ES256' };

// The certificate the client proved on this TLS connection; rejectUnauthorized is false, so
// Node lets the handshake through whatever the chain, and oidc-provider decides trust by
// matching its SHA-256 against the client's registered jwks x5c. oidc-provider accepts a
// crypto.X509Certificate or a PEM string here.
function getCertificate(ctx) {
  return ctx.socket.getPeerX509Certificate?.() ?? undefined;
}

const configuration = {
  clients,
  clientAuthMethods: ['self_signed_tls_client_auth', 'client_secret_basic', 'client_secret_post'],
  jwks: { keys: [signingJwk] },
  // The only signing key is ES256; the client default (RS256) would make every client invalid.
  clientDefaults: { id_token_signed_response_alg: 'ES256' },
  cookies: { keys: ['tokensmith-bench-cookie-key-not-used-by-token-endpoint'] },
  routes: {
    token: '/oauth2/token',
    introspection: '/oauth2/introspect',
    revocation: '/oauth2/revoke',
  },
  ttl: { ClientCredentials: 3600 },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      // Any authenticated client may introspect any token (the default, minus its notice).
      allowedPolicy: async () => true,
    },
    mTLS: {
      enabled: true,
      certificateBoundAccessTokens: true,
      selfSignedTlsClientAuth: true,
      tlsClientAuth: false,
      getCertificate,
    },
  },
};

if (adapterName === 'map') {
  configuration.adapter = (await import('./map_adapter.js')).default;
} else if (adapterName !== 'memory') {
  console.error(`server.js: ADAPTER must be memory or map, not ${adapterName}`);
  process.exit(2);
}

let handler = (req, res) => { res.statusCode = 503; res.end(); };
const server = https.createServer({
  key: readFileSync(keyFile),
  cert: readFileSync(certFile),
  requestCert: true,
  rejectUnauthorized: false,
  minVersion: 'TLSv1.2',
}, (req, res) => handler(req, res));

server.on('tlsClientError', () => {}); // a failed handshake is the client's problem, not a log line

await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, '127.0.0.1', resolve);
});
const actualPort = server.address().port;
const issuer = `https://127.0.0.1:${actualPort}`;

const tInit = process.hrtime.bigint();
const provider = new Provider(issuer, configuration);
provider.proxy = false;
let warmMs = 0;
if (process.env.WARM_CLIENTS === '1') {
  const tWarm = process.hrtime.bigint();
  for (const { client_id: id } of clients) {
    // eslint-disable-next-line no-await-in-loop
    const client = await provider.Client.find(id);
    if (!client) throw new Error(`client ${id} did not load`);
  }
  warmMs = ms(tWarm);
}
const initMs = ms(tInit);
handler = provider.callback();

const rssMb = process.memoryUsage().rss / 2 ** 20;
console.error(`startup clients=${clients.length} adapter=${adapterName} `
  + `json_ms=${loadMs.toFixed(0)} provider_ms=${initMs.toFixed(0)} warm_ms=${warmMs.toFixed(0)} `
  + `total_ms=${ms(t0).toFixed(0)} rss_mb=${rssMb.toFixed(1)} node=${process.version}`);
process.stdout.write(`ready ${issuer}\n`);

let stopping = false;
function stop() {
  if (stopping) return;
  stopping = true;
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 3000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
