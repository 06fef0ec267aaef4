//! The FHIRPath invariants of the R4 definitions (`dom-*`, `per-1`, `pat-1`, …), from
//! `fhir-profiles/r4/constraints.json`, checked on every element they are declared on.
//!
//! `ele-1` ("all elements must have a value or children") is checked natively by the
//! structural validator, which refuses empty objects, arrays and strings.

use std::{collections::HashMap, sync::OnceLock};

use rustc_hash::FxHashMap;
use serde::Deserialize;
use serde_json::Value;

use crate::{
    fhirpath::{self, Env, EvalError, Expression, Item, Node},
    validation::{Problem, ProblemKind, Severity},
};

const CONSTRAINTS_JSON: &str = include_str!("../../../fhir-profiles/r4/constraints.json");

/// One invariant.
#[derive(Debug)]
pub struct Constraint {
    pub key: String,
    pub severity: Severity,
    pub human: String,
    pub expression: Expression,
}

/// Path below the root, key, severity, human text, expression.
type Row = (String, String, String, String, String);

#[derive(Debug, Deserialize)]
struct File {
    types: HashMap<String, Vec<Row>>,
}

/// The invariants of a set of definitions, by type and path.
#[derive(Debug, Default)]
pub struct Invariants {
    by_type: FxHashMap<String, FxHashMap<String, Vec<Constraint>>>,
    /// Constraints whose expression this engine cannot parse: (key, error).
    pub unparsed: Vec<(String, String)>,
}

impl Invariants {
    pub fn r4() -> &'static Invariants {
        static INVARIANTS: OnceLock<Invariants> = OnceLock::new();
        INVARIANTS.get_or_init(|| {
            let file: File = serde_json::from_str(CONSTRAINTS_JSON)
                .expect("fhir-profiles/r4/constraints.json is valid (regenerate with scripts/gen-r4-definitions.mjs)");
            let mut out = Invariants::default();
            for (type_name, rows) in file.types {
                for (path, key, severity, human, expression) in rows {
                    out.add(&type_name, &path, key, &severity, human, &expression);
                }
            }
            out
        })
    }

    fn add(
        &mut self,
        type_name: &str,
        path: &str,
        key: String,
        severity: &str,
        human: String,
        expression: &str,
    ) {
        match Expression::parse(expression) {
            Ok(expression) => self
                .by_type
                .entry(type_name.to_string())
                .or_default()
                .entry(path.to_string())
                .or_default()
                .push(Constraint {
                    key,
                    severity: if severity == "error" {
                        Severity::Error
                    } else {
                        Severity::Warning
                    },
                    human,
                    expression,
                }),
            Err(e) => self.unparsed.push((key, e.to_string())),
        }
    }

    /// Every constraint, for tests and reports.
    pub fn all(&self) -> impl Iterator<Item = (&str, &str, &Constraint)> {
        self.by_type.iter().flat_map(|(t, paths)| {
            paths
                .iter()
                .flat_map(move |(p, cs)| cs.iter().map(move |c| (t.as_str(), p.as_str(), c)))
        })
    }

    fn at(&self, type_name: &str, path: &str) -> &[Constraint] {
        self.by_type
            .get(type_name)
            .and_then(|p| p.get(path))
            .map_or(&[], Vec::as_slice)
    }

    /// Checks every invariant on `resource`; failures are pushed to `problems`, and
    /// expressions that could not be evaluated (a collection where one item was needed) to
    /// `errors` as (constraint key, location, error).
    pub fn check(
        &self,
        resource: &Value,
        problems: &mut Vec<Problem>,
        errors: &mut Vec<(String, String, EvalError)>,
    ) {
        let Item::Node(root) = fhirpath::resource_node(resource) else {
            return;
        };
        let Some(rt) = resource.get("resourceType").and_then(Value::as_str) else {
            return;
        };
        let env = Env {
            resource: Some(Item::Node(root)),
            root_resource: None,
            context: None,
        };
        let mut walk = Walk {
            invariants: self,
            problems,
            errors,
            at: rt.to_string(),
        };
        walk.node(root, &[], &env);
    }
}

struct Walk<'w> {
    invariants: &'w Invariants,
    problems: &'w mut Vec<Problem>,
    errors: &'w mut Vec<(String, String, EvalError)>,
    /// Location of the node being checked, as FHIRPath; grown and cut back as the walk goes.
    at: String,
}

impl Walk<'_> {
    /// Checks `node` against `declared` (the constraints of the element it fills) and those
    /// of its own type, then its children.
    fn node<'a>(&mut self, node: Node<'a>, declared: &[Constraint], env: &Env<'a>) {
        let own: &[Constraint] = if node.ty.path.is_empty() && !node.ty.table.is_empty() {
            self.invariants.at(node.ty.table, "")
        } else {
            &[]
        };
        // Contained resources are not expected to carry narrative of their own (the
        // specification's validator does not ask them for it either).
        let contained = env.root_resource.is_some();
        for constraint in declared.iter().chain(own) {
            if contained && constraint.key == "dom-6" {
                continue;
            }
            let env = Env {
                context: Some(Item::Node(node)),
                ..env.clone()
            };
            match constraint.expression.evaluate(&[Item::Node(node)], &env) {
                Ok(result) if fhirpath::satisfied(&result) => {}
                Ok(_) => self.problems.push(Problem {
                    kind: ProblemKind::Invariant,
                    severity: constraint.severity,
                    expression: self.at.clone(),
                    message: format!("{}: {}", constraint.key, constraint.human),
                }),
                Err(e) => self
                    .errors
                    .push((constraint.key.clone(), self.at.clone(), e)),
            }
        }
        if node.value.is_none_or(|v| !v.is_object()) {
            return;
        }
        let table = node.ty.table;
        let invariants = self.invariants;
        node.visit_children(&mut |element, key, index, child| {
            let len = self.at.len();
            self.at.push('.');
            self.at.push_str(key);
            if let Some(i) = index {
                use std::fmt::Write;
                let _ = write!(self.at, "[{i}]");
            }
            let declared = invariants.at(table, &element.path);
            if child.value.is_some_and(|v| v.get("resourceType").is_some()) {
                // A resource inside this one: contained resources keep the outer resource as
                // %rootResource; Bundle entries and parameters stand on their own.
                let item = Item::Node(child);
                let inner = Env {
                    root_resource: if key == "contained" {
                        env.root_resource.clone().or_else(|| env.resource.clone())
                    } else {
                        None
                    },
                    resource: Some(item),
                    context: None,
                };
                self.node(child, declared, &inner);
            } else {
                self.node(child, declared, env);
            }
            self.at.truncate(len);
        });
    }
}
