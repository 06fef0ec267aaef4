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
            for (code, bases, kind, expression, targets, components) in file.params {
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
