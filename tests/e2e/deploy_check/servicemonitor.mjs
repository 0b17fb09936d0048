// Checks the ServiceMonitors in a JSON array (argv[2], written by checks.py) against the
// prometheus-operator schema shipped by @kubernetes-models/prometheus-operator (types, required
// fields, duration patterns). Unknown fields are not errors there (the API server prunes them
// silently), so deploy_check.sh also type-checks the same objects with tsc, whose excess-property
// check rejects them.
import { readFileSync, writeFileSync } from "node:fs";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const [input, tsOut] = process.argv.slice(2);
const docs = JSON.parse(readFileSync(input, "utf8"));
if (docs.length === 0) {
  console.error("no ServiceMonitor to check");
  process.exit(1);
}
let failed = 0;
for (const doc of docs) {
  try {
    new ServiceMonitor(doc).validate();
    console.log(`ServiceMonitor ${doc.metadata?.name}: valid against monitoring.coreos.com/v1`);
  } catch (e) {
    failed++;
    console.error(`ServiceMonitor ${doc.metadata?.name}: ${e.message}`);
  }
}
// The same objects as typed literals, for `tsc --noEmit`.
const lines = [
  'import type { IServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";',
  ...docs.map((d, i) => `export const doc${i}: IServiceMonitor = ${JSON.stringify(d, null, 2)};`),
];
writeFileSync(tsOut, lines.join("\n") + "\n");
process.exit(failed ? 1 : 0);
