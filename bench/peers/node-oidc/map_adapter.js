// An unbounded in-memory adapter for oidc-provider (ADAPTER=map). oidc-provider's own memory
// adapter is an LRU of 1000 entries: under load it forgets older tokens. This one keeps every
// entry until it expires, which is closer to a store that keeps every issued token (tokensmith
// keeps them in SQLite). Expired entries are dropped when looked up and by a sweep once a minute.

const storage = new Map(); // key -> { payload, exp (ms epoch or Infinity) }
const grants = new Map(); // grantId -> [keys]
const byUid = new Map(); // session uid -> id
const byUserCode = new Map(); // user code -> id

const grantable = new Set([
  'AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode',
  'BackchannelAuthenticationRequest', 'PreAuthorizedCode',
]);

function live(key) {
  const entry = storage.get(key);
  if (!entry) return undefined;
  if (entry.exp <= Date.now()) {
    storage.delete(key);
    return undefined;
  }
  return entry.payload;
}

setInterval(() => {
  const now = Date.now();
  for (const [key, { exp }] of storage) if (exp <= now) storage.delete(key);
}, 60_000).unref();

export default class MapAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    if (this.model === 'Session') byUid.set(payload.uid, id);
    const { grantId, userCode } = payload;
    if (grantable.has(this.model) && grantId) {
      const keys = grants.get(grantId);
      if (keys) keys.push(key); else grants.set(grantId, [key]);
    }
    if (userCode) byUserCode.set(userCode, id);
    storage.set(key, { payload, exp: expiresIn ? Date.now() + expiresIn * 1000 : Infinity });
  }

  async find(id) {
    return live(this.key(id));
  }

  async findByUid(uid) {
    const id = byUid.get(uid);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = byUserCode.get(userCode);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const payload = live(this.key(id));
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    storage.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const key of grants.get(grantId) ?? []) storage.delete(key);
    grants.delete(grantId);
  }
}
