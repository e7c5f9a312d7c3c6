// `npm run build`: ESM in dist/esm, CommonJS in dist/cjs, each with its .d.ts.
// Plain Node (no build tool): clean, compile twice, mark the CommonJS half as such.
import { execFileSync } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
const versionFile = readFileSync(join(root, "src", "version.ts"), "utf8");
if (!versionFile.includes(`"${pkg.version}"`)) {
  console.error(`src/version.ts does not say ${pkg.version} (package.json's version)`);
  process.exit(1);
}

rmSync(join(root, "dist"), { recursive: true, force: true });
for (const project of ["tsconfig.json", "tsconfig.cjs.json"]) {
  try {
    execFileSync(process.execPath, [tsc, "-p", join(root, project)], { stdio: "inherit" });
  } catch {
    process.exit(1); // tsc has printed the errors
  }
}
writeFileSync(join(root, "dist", "cjs", "package.json"), JSON.stringify({ type: "commonjs" }) + "\n");
