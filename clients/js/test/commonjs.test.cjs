// The CommonJS build: `require("@apiauth/client")` from a CommonJS function (AWS Lambda's default).
const assert = require("node:assert/strict");
const { test } = require("node:test");

test("require() gives the same API, with typed errors", async () => {
  const client = require("@apiauth/client");
  for (const name of ["getSecrets", "withSecrets", "createFunctionToken", "proxy", "createConnectSession", "deleteVisitor", "clearCache"]) {
    assert.equal(typeof client[name], "function", name);
  }
  await assert.rejects(client.getSecrets(undefined, { env: {} }), client.NotConfigured);
});

test("the package has no runtime dependencies", () => {
  const pkg = require("../package.json");
  assert.deepEqual(Object.keys(pkg.dependencies ?? {}), []);
  assert.deepEqual(Object.keys(pkg.peerDependencies ?? {}), []);
});
