#!/usr/bin/env bash
# Install oidc-provider (the exact version pinned in package.json and package-lock.json) into
# bench/peers/node-oidc/node_modules. Needs node (20 or newer) and npm; reaches only the npm registry.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
command -v node >/dev/null || { echo "setup.sh: node is not installed" >&2; exit 1; }
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
    echo "setup.sh: node $(node --version) is too old; 20 or newer is needed" >&2
    exit 1
fi
if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
else
    npm install --no-audit --no-fund --loglevel=error
fi
node -e 'import("oidc-provider").then(() => console.log("node-oidc: oidc-provider " + require("./node_modules/oidc-provider/package.json").version + " on node " + process.version))'
