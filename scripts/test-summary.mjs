#!/usr/bin/env node
// Prints the closing line CI reads, exactly `N passed, N failed`, from vitest's JSON report (skipped tests, if
// any, on the line before it). Exits 1 when the report is missing or counts a failure, so a run that crashed
// before reporting is never taken as green.

import { readFileSync } from "node:fs";

const path = process.argv[2] ?? "reports/vitest.json";
let report;
try {
  report = JSON.parse(readFileSync(path, "utf8"));
} catch (error) {
  console.log(`no test report at ${path}: ${error.message}`);
  console.log("0 passed, 1 failed");
  process.exit(1);
}
const passed = report.numPassedTests ?? 0;
// A test file that fails to load has no failed test in it, yet it failed: count it as one failure.
const suitesFailedWithoutTests = (report.testResults ?? []).filter(
  (suite) => suite.status === "failed" && !(suite.assertionResults ?? []).some((a) => a.status === "failed"),
).length;
const failed = (report.numFailedTests ?? 0) + suitesFailedWithoutTests;
const skipped = (report.numPendingTests ?? 0) + (report.numTodoTests ?? 0);

if (skipped > 0) console.log(`${skipped} skipped (each skipping suite prints why above)`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed > 0 || passed === 0 ? 1 : 0);
