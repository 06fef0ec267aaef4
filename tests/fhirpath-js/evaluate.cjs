// Evaluates every R4 search parameter's FHIRPath expression on every example resource of its
// base type with HL7's fhirpath.js (the npm package `fhirpath`, R4 model), and prints one JSON
// line per (file, parameter): {"f": file, "c": code, "v": [values]} or {"f", "c", "e": error}.
// Values are normalised the way the Rust side normalises its own: JSON with sorted keys.
//
//   NODE_PATH=<dir with node_modules> node evaluate.cjs <examples dir> <search-parameters.json>
'use strict';
const fs = require('fs');
const path = require('path');
const fhirpath = require('fhirpath');
const r4 = require('fhirpath/fhir-context/r4');

const [examplesDir, paramsFile] = process.argv.slice(2);
const params = JSON.parse(fs.readFileSync(paramsFile, 'utf8')).params;

function sorted(value) {
  if (Array.isArray(value)) return value.map(sorted);
  if (value && typeof value === 'object') {
    const out = {};
    for (const key of Object.keys(value).sort()) out[key] = sorted(value[key]);
    return out;
  }
  return value;
}

// Each value as JSON text; the Rust side compares keys sorted and numbers by value.
function normalise(value) {
  return JSON.stringify(sorted(value));
}

const compiled = new Map();
const files = fs.readdirSync(examplesDir).filter((f) => f.endsWith('.json') && f !== 'package.json' && !f.startsWith('.')).sort();
for (const file of files) {
  const resource = JSON.parse(fs.readFileSync(path.join(examplesDir, file), 'utf8'));
  const type = resource.resourceType;
  for (const [code, bases, kind, expression] of params) {
    if (!bases.includes(type) && !bases.includes('Resource') && !bases.includes('DomainResource')) continue;
    if (bases.includes('DomainResource') && ['Bundle', 'Binary', 'Parameters'].includes(type)) continue;
    let line;
    try {
      if (!compiled.has(expression)) compiled.set(expression, fhirpath.compile(expression, r4));
      const values = compiled.get(expression)(resource, { resource });
      line = { f: file, c: code, v: values.map(normalise) };
    } catch (e) {
      line = { f: file, c: code, e: String(e.message || e).slice(0, 200) };
    }
    process.stdout.write(JSON.stringify(line) + '\n');
  }
}
