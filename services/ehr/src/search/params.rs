//! The search parameters of the R4 definitions (`fhir-profiles/r4/search-parameters.json`),
//! by resource type, with their FHIRPath expressions compiled once.

use std::{collections::HashMap, sync::Arc};

use serde::Deserialize;

use crate::{
    definitions::{Definitions, ResourceType},
    fhirpath::Expression,
};

const SEARCH_PARAMETERS_JSON: &str =
    include_str!("../../../../fhir-profiles/r4/search-parameters.json");

/// A search parameter's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    String,
    Token,
    Reference,
    Date,
    Number,
    Quantity,
    Uri,
    Composite,
    Special,
}

/// One component of a composite parameter.
#[derive(Debug)]
pub struct Component {
    pub code: String,
    pub kind: ParamType,
    pub expression: Expression,
}

/// One search parameter.
#[derive(Debug)]
pub struct Param {
    pub code: String,
    pub kind: ParamType,
    pub expression: Expression,
    /// Resource types a reference parameter may point at.
    pub targets: Vec<String>,
    pub components: Vec<Component>,
    /// Whose index rows hold its values.
    pub stored: Stored,
}

/// Where the search index keeps a parameter's values. Several R4 parameters repeat another's
/// values: Observation's `combo-code` is `code | component-code`, `patient` is `subject`
/// where it points at a Patient. Writing their rows again cost an observation a third of its
/// index rows (and each row a heap tuple and two or three B-tree entries); they are searched
/// through the rows of the parameters whose values they are instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Under its own code.
    Own,
    /// Its expression is the union of these parameters' expressions (same type, and for a
    /// composite the same components): their rows, none of its own.
    Union(Vec<String>),
    /// Its expression is `<code's expression>.where(resolve() is <target>)`: the reference
    /// rows of `code` that point at `target`. Its `:identifier` rows stay its own (a
    /// reference known only by identifier resolves to nothing, so `code`'s do not say).
    Targets { code: String, target: String },
}

impl Param {
    /// The codes whose index rows hold this parameter's values — `suffix` is the row kind
    /// (`""`, or `":text"`, `":of-type"`, `":identifier"` for the rows those modifiers
    /// read) — and the target type those rows must name.
    pub fn row_codes(&self, suffix: &str) -> (Vec<String>, Option<&str>) {
        match &self.stored {
            Stored::Union(codes) => (codes.iter().map(|c| format!("{c}{suffix}")).collect(), None),
            Stored::Targets { code, target } if suffix.is_empty() => {
                (vec![code.clone()], Some(target.as_str()))
            }
            _ => (vec![format!("{}{suffix}", self.code)], None),
        }
    }
}

type Row = (
    String,
    Vec<String>,
    ParamType,
    String,
    Vec<String>,
    Vec<(String, String, Option<ParamType>)>,
);

#[derive(Deserialize)]
struct File {
    params: Vec<Row>,
}

/// The parameters of every type.
#[derive(Debug, Default)]
pub struct SearchParams {
    by_type: HashMap<ResourceType, HashMap<String, Arc<Param>>>,
    /// Parameters whose expression this engine cannot parse: (code, error).
    pub unparsed: Vec<(String, String)>,
}

impl SearchParams {
    pub fn r4() -> &'static SearchParams {
        static PARAMS: std::sync::OnceLock<SearchParams> = std::sync::OnceLock::new();
        PARAMS.get_or_init(|| {
            let file: File = serde_json::from_str(SEARCH_PARAMETERS_JSON).expect(
                "fhir-profiles/r4/search-parameters.json is valid (regenerate with scripts/gen-r4-definitions.mjs)",
            );
            let defs = Definitions::r4();
            let mut out = SearchParams::default();
            let mut branches = HashMap::new();
            for (code, bases, kind, expression, targets, components) in file.params {
                let expression_text = expression.clone();
                let compiled = match Expression::parse(&expression) {
                    Ok(e) => e,
                    Err(e) => {
                        out.unparsed.push((code, e.to_string()));
                        continue;
                    }
                };
                let mut parts = Vec::new();
                for (c, e, k) in components {
                    match Expression::parse(&e) {
                        Ok(expression) => parts.push(Component {
                            code: c,
                            kind: k.unwrap_or(ParamType::Token),
                            expression,
                        }),
                        Err(err) => out.unparsed.push((format!("{code}.{c}"), err.to_string())),
                    }
                }
                // Parameters of Resource and DomainResource apply to every type.
                let types: Vec<ResourceType> = if bases
                    .iter()
                    .any(|b| b == "Resource" || b == "DomainResource")
                {
                    defs.resource_types().collect()
                } else {
                    bases.iter().filter_map(|b| defs.resource_type(b)).collect()
                };
                // Each type keeps only the branches of a shared expression that start from it.
                for rt in types {
                    let Some(expression) = compiled.for_resource_type(rt.as_str()) else {
                        continue;
                    };
                    let param = Arc::new(Param {
                        code: code.clone(),
                        kind,
                        expression,
                        targets: targets.clone(),
                        stored: Stored::Own,
                        components: parts
                            .iter()
                            .map(|c| Component {
                                code: c.code.clone(),
                                kind: c.kind,
                                expression: c.expression.clone(),
                            })
                            .collect(),
                    });
                    out.by_type.entry(rt).or_default().insert(code.clone(), param);
                    if let Some(own) = branches_of(&expression_text, rt.as_str()) {
                        branches.insert((rt, code.clone()), own);
                    }
                }
            }
            for (rt, params) in &mut out.by_type {
                let found = repeated(params, |code| branches.get(&(*rt, code.to_string())));
                for (code, stored) in found {
                    let param = params.get_mut(&code).and_then(Arc::get_mut);
                    param.expect("built here, not shared yet").stored = stored;
                }
            }
            out
        })
    }

    pub fn get(&self, rt: ResourceType, code: &str) -> Option<&Arc<Param>> {
        self.by_type.get(&rt).and_then(|m| m.get(code))
    }

    /// Every parameter of a type.
    pub fn of(&self, rt: ResourceType) -> impl Iterator<Item = &Arc<Param>> {
        self.by_type.get(&rt).into_iter().flat_map(|m| m.values())
    }
}

/// The top-level union branches of an expression's text that start from `rt` (`rt` or
/// `rt.…`), outer parentheses removed; `None` when a branch starts from anything else than a
/// resource type (`%resource`, a function), which [`repeated`] then leaves alone.
fn branches_of(text: &str, rt: &str) -> Option<Vec<String>> {
    let defs = Definitions::r4();
    let mut out = Vec::new();
    for branch in split_top(text, '|') {
        let mut b = branch.trim();
        while b.starts_with('(')
            && b.ends_with(')')
            && split_top(&b[1..b.len() - 1], ')').len() == 1
        {
            b = b[1..b.len() - 1].trim();
        }
        let root = b.split(['.', '(', ' ']).next().unwrap_or_default();
        defs.resource_type(root)?;
        if root == rt {
            out.push(b.to_string());
        }
    }
    Some(out)
}

/// `text` split at `sep` where no parenthesis or quoted string is open; a `)` as `sep`
/// splits where one closes below the top, so one piece means the parentheses stay balanced.
fn split_top(text: &str, sep: char) -> Vec<&str> {
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    let mut out = Vec::new();
    for (i, c) in text.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            _ if quoted => {}
            '(' => depth += 1,
            ')' if sep == ')' && depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            ')' => depth -= 1,
            _ if c == sep && depth == 0 => {
                out.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

/// The parameters of one type whose values are other parameters' values (see [`Stored`]),
/// found from the branches of their expressions (`branches(code)`). A union is made of
/// parameters stored under their own codes: they are decided first (fewer branches).
fn repeated<'a>(
    params: &HashMap<String, Arc<Param>>,
    branches: impl Fn(&str) -> Option<&'a Vec<String>>,
) -> Vec<(String, Stored)> {
    let same_components = |a: &Param, b: &Param| {
        a.components.len() == b.components.len()
            && a.components
                .iter()
                .zip(&b.components)
                .all(|(x, y)| x.kind == y.kind && x.expression.text() == y.expression.text())
    };
    let mut candidates: Vec<(&Arc<Param>, &Vec<String>)> = params
        .values()
        .filter(|p| !p.code.starts_with('_') && p.kind != ParamType::Special)
        .filter_map(|p| Some((p, branches(&p.code)?)))
        .filter(|(_, b)| !b.is_empty())
        .collect();
    candidates.sort_by(|a, b| a.1.len().cmp(&b.1.len()).then(a.0.code.cmp(&b.0.code)));
    let mut found: HashMap<String, Stored> = HashMap::new();
    for &(param, own) in &candidates {
        if let ([branch], ParamType::Reference) = (own.as_slice(), param.kind)
            && let Some((of, rest)) = branch.split_once(".where(resolve() is ")
            && let Some(target) = rest.strip_suffix(')')
            && !of.contains(".where(")
            && let Some((source, _)) = candidates
                .iter()
                .find(|(q, b)| q.kind == ParamType::Reference && b.len() == 1 && b[0] == of)
        {
            let stored = Stored::Targets {
                code: source.code.clone(),
                target: target.to_string(),
            };
            found.insert(param.code.clone(), stored);
            continue;
        }
        if own.len() < 2 {
            continue;
        }
        // Own-stored parameters whose branches are some of these, largest first, until all
        // are covered.
        let mut sources: Vec<(&String, &Vec<String>)> = candidates
            .iter()
            .filter(|(q, b)| {
                q.kind == param.kind
                    && !found.contains_key(&q.code)
                    && b.len() < own.len()
                    && b.iter().all(|x| own.contains(x))
                    && same_components(q, param)
            })
            .map(|(q, b)| (&q.code, *b))
            .collect();
        sources.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
        let mut covered: Vec<&String> = Vec::new();
        let mut chosen = Vec::new();
        for (q, b) in sources {
            if b.iter().any(|x| !covered.contains(&x)) {
                covered.extend(b);
                chosen.push(q.clone());
            }
        }
        if own.iter().all(|x| covered.contains(&x)) {
            found.insert(param.code.clone(), Stored::Union(chosen));
        }
    }
    found.into_iter().collect()
}
