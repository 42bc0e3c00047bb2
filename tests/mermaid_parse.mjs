// Parses Mermaid diagrams with Mermaid itself, as the docs site's browser will.
// stdin: a JSON list of [where, source]; stdout: a JSON list of "where: error" lines.
// MERMAID_DIR holds node_modules with mermaid and jsdom (scripts/test.sh installs them).
import { createRequire } from 'module';
import { pathToFileURL } from 'url';
import fs from 'fs';
const require = createRequire(process.env.MERMAID_DIR + '/');
const load = async (name) => import(pathToFileURL(require.resolve(name)).href);
const { JSDOM } = await load('jsdom');
const dom = new JSDOM('<!doctype html><html><body></body></html>');
globalThis.window = dom.window; globalThis.document = dom.window.document;
const mermaid = (await load('mermaid')).default;
const diagrams = JSON.parse(fs.readFileSync(0, 'utf8'));
const errors = [];
for (const [where, src] of diagrams) {
  try { await mermaid.parse(src); } catch (e) { errors.push(where + ': ' + String(e.message).split('\n').slice(0, 3).join(' ')); }
}
console.log(JSON.stringify(errors));
