// Parses and validates an AsyncAPI document with the AsyncAPI Initiative's
// own parser (@asyncapi/parser), resolving its file references.
//
//   node asyncapi-validate.mjs path/to/asyncapi.yaml
//
// Prints one JSON line: {"errors": [...], "warnings": n, "channels": [...],
// "operations": [...], "messages": {name: {contentType, routingKeys}}}.
// Exits 1 when the document has errors (or does not parse at all).
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Parser, fromFile } from '@asyncapi/parser';

const path = resolve(process.argv[2]);
const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, path).parse({
  source: pathToFileURL(path).href,
});
// Spectral severities: 0 error, 1 warning, 2 info, 3 hint.
const errors = diagnostics
  .filter((d) => d.severity === 0)
  .map((d) => `${d.code}: ${d.message} at ${d.path.join('.')}`);
const out = { errors, warnings: diagnostics.filter((d) => d.severity === 1).length };
if (document) {
  out.channels = document.channels().all().map((c) => c.address());
  out.operations = document.operations().all().map((o) => ({
    id: o.id(),
    action: o.action(),
    channel: o.channels().all().map((c) => c.address()),
    cc: o.bindings().get('amqp')?.value()?.cc ?? [],
    mandatory: o.bindings().get('amqp')?.value()?.mandatory ?? null,
  }));
  out.messages = {};
  for (const m of document.messages().all()) {
    // A multi-format payload keeps the schema under `schema`.
    const payload = m.payload()?.json();
    const schema = payload?.schema ?? payload;
    out.messages[m.name()] = {
      contentType: m.contentType(),
      schemaId: schema?.$id ?? null,
      required: schema?.required ?? [],
    };
  }
}
console.log(JSON.stringify(out));
process.exit(errors.length > 0 || !document ? 1 : 0);
