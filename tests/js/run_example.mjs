// Call one exported handler of an example the way its platform would, and print its answer
// as JSON on stdout (tests/test_js_client.py reads it):
//   node run_example.mjs handler MODULE EXPORT EVENT_JSON   -> EXPORT(event, context)
//   node run_example.mjs worker MODULE URL                  -> default.fetch(new Request(URL), env)
// A Worker's env is its bindings: here APIAUTH_* and *_API_URL from this process's environment.
import { createRequire } from "node:module";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";

const [mode, modulePath, ...rest] = process.argv.slice(2);
const file = resolve(modulePath);
const loaded = file.endsWith(".cjs") ? createRequire(import.meta.url)(file) : await import(pathToFileURL(file).href);

if (mode === "handler") {
  const [exportName, eventJson] = rest;
  const answer = await loaded[exportName](JSON.parse(eventJson ?? "{}"), { functionName: "example" });
  console.log(JSON.stringify(answer));
} else if (mode === "worker") {
  const bindings = Object.fromEntries(
    Object.entries(process.env).filter(([name]) => name.startsWith("APIAUTH_") || name.endsWith("_API_URL")),
  );
  const response = await loaded.default.fetch(new Request(rest[0]), bindings, {});
  console.log(JSON.stringify({ status: response.status, body: await response.json() }));
} else {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}
