// Prints the gzipped size of every file of the built app and the total; exits 1 when the
// total reaches the budget (500 KB = 512000 bytes gzipped, issue 13).
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const BUDGET = 512000;
const here = fileURLToPath(new URL(".", import.meta.url));
// Default: the build output of `npm run build`; or a directory given (relative to the cwd).
const dir = process.argv[2] ? resolve(process.argv[2]) : resolve(here, "../../gatewayd/static");

/** @param {string} root @returns {string[]} */
function files(root) {
  /** @type {string[]} */
  const out = [];
  for (const name of readdirSync(root)) {
    const path = join(root, name);
    if (statSync(path).isDirectory()) out.push(...files(path));
    else out.push(path);
  }
  return out;
}

/** @param {number} n */
const kb = (n) => `${(n / 1024).toFixed(1)} KB`;

let all;
try {
  all = files(dir).sort();
} catch (e) {
  console.error(`size: cannot read ${dir}: ${e instanceof Error ? e.message : e}`);
  process.exit(2);
}
if (all.length === 0) {
  console.error(`size: no files in ${dir}`);
  process.exit(2);
}

let rawTotal = 0;
let total = 0;
const rows = all.map((path) => {
  const data = readFileSync(path);
  const gz = gzipSync(data, { level: 9 }).length;
  rawTotal += data.length;
  total += gz;
  return { name: relative(dir, path), raw: data.length, gz };
});
const width = Math.max(...rows.map((r) => r.name.length), 5);
console.log(`${"file".padEnd(width)}  ${"raw".padStart(10)}  ${"gzipped".padStart(10)}`);
for (const r of rows) console.log(`${r.name.padEnd(width)}  ${kb(r.raw).padStart(10)}  ${kb(r.gz).padStart(10)}`);
console.log(`${"total".padEnd(width)}  ${kb(rawTotal).padStart(10)}  ${kb(total).padStart(10)}`);
const verdict = total < BUDGET ? "within" : "OVER";
console.log(`gzipped total: ${total} bytes — ${verdict} the budget of ${BUDGET} bytes (500 KB)`);
process.exit(total < BUDGET ? 0 : 1);
