//! Parsing search parameters: conditions with their modifiers and prefixes, `_sort`,
//! `_include`.

use super::*;

/// Why a condition could not be parsed.
pub(super) enum ConditionError {
    Unknown(String),
    Invalid(EhrError),
}
pub(super) use ConditionError::{Invalid, Unknown};

impl From<EhrError> for ConditionError {
    fn from(e: EhrError) -> Self {
        Invalid(e)
    }
}

pub(super) fn parse_condition(
    rt: ResourceType,
    key: &str,
    value: &str,
) -> Result<Condition, ConditionError> {
    let params = SearchParams::r4();
    let defs = Definitions::r4();
    if let Some(rest) = key.strip_prefix("_has:") {
        // _has:Type:ref:rest
        let mut parts = rest.splitn(3, ':');
        let (Some(source), Some(reference), Some(inner_key)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(Invalid(bad(
                "_has",
                "use _has:Type:reference:parameter=value",
            )));
        };
        let source = defs
            .resource_type(source)
            .ok_or_else(|| Invalid(bad("_has", format!("{source:?} is not a resource type"))))?;
        let param = params
            .get(source, reference)
            .filter(|p| p.kind == ParamType::Reference)
            .ok_or_else(|| {
                Invalid(bad(
                    "_has",
                    format!("{reference} is not a reference parameter of {source}"),
                ))
            })?
            .clone();
        let inner = parse_condition(source, inner_key, value)?;
        return Ok(Condition::Has {
            source,
            param,
            inner: Box::new(inner),
        });
    }
    // A chain: ref[:Type].rest
    let (head, chained) = match key.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (key, None),
    };
    let (code, modifier) = match head.split_once(':') {
        Some((c, m)) => (c, Some(m.to_string())),
        None => (head, None),
    };
    let param = params
        .get(rt, code)
        .ok_or_else(|| Unknown(key.to_string()))?
        .clone();
    if let Some(rest) = chained {
        if param.kind != ParamType::Reference {
            return Err(Invalid(bad(
                "search",
                format!("{code} is not a reference parameter; it cannot be chained"),
            )));
        }
        let target = match modifier.as_deref() {
            Some(t) => defs
                .resource_type(t)
                .ok_or_else(|| Invalid(bad("search", format!("{t:?} is not a resource type"))))?,
            None => {
                let candidates: Vec<ResourceType> = param
                    .targets
                    .iter()
                    .filter_map(|t| defs.resource_type(t))
                    .filter(|t| {
                        let inner_code = rest.split(['.', ':']).next().unwrap_or_default();
                        params.get(*t, inner_code).is_some()
                    })
                    .collect();
                match candidates.as_slice() {
                    [one] => *one,
                    [] => {
                        return Err(Invalid(bad(
                            "search",
                            format!("no target of {code} has the parameter in {rest:?}"),
                        )));
                    }
                    _ => {
                        return Err(Invalid(bad(
                            "search",
                            format!(
                                "{code} may point at several types; name one ({code}:Type.{rest})"
                            ),
                        )));
                    }
                }
            }
        };
        let inner = parse_condition(target, rest, value).map_err(|e| match e {
            Unknown(name) => Invalid(bad(
                "search",
                format!("{name} is not a search parameter of {target}"),
            )),
            other => other,
        })?;
        return Ok(Condition::Chain {
            param,
            target,
            inner: Box::new(inner),
        });
    }
    if modifier.as_deref() == Some("missing") {
        let missing = match value {
            "true" => true,
            "false" => false,
            _ => return Err(Invalid(bad("search", ":missing takes true or false"))),
        };
        return Ok(Condition::Missing { param, missing });
    }
    check_modifier(&param, modifier.as_deref())?;
    let values: Vec<String> = split_values(value);
    if values.iter().any(String::is_empty) {
        return Err(Invalid(bad("search", format!("{key} needs a value"))));
    }
    for v in &values {
        check_value(&param, modifier.as_deref(), v)?;
    }
    Ok(Condition::Param {
        param,
        modifier,
        values,
    })
}

pub(super) fn check_modifier(param: &Param, modifier: Option<&str>) -> Result<(), EhrError> {
    let Some(m) = modifier else { return Ok(()) };
    let ok = match param.kind {
        ParamType::String => matches!(m, "exact" | "contains"),
        ParamType::Token => matches!(m, "text" | "not" | "of-type"),
        ParamType::Reference => m == "identifier" || Definitions::r4().resource_type(m).is_some(),
        ParamType::Uri => matches!(m, "below" | "above"),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(bad(
            "search",
            format!(
                "the modifier :{m} does not apply to {} ({:?})",
                param.code, param.kind
            ),
        ))
    }
}

pub(super) fn prefix_of(value: &str) -> (Prefix, &str) {
    const PREFIXES: [(&str, Prefix); 9] = [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("gt", Prefix::Gt),
        ("lt", Prefix::Lt),
        ("ge", Prefix::Ge),
        ("le", Prefix::Le),
        ("sa", Prefix::Sa),
        ("eb", Prefix::Eb),
        ("ap", Prefix::Ap),
    ];
    for (text, prefix) in PREFIXES {
        if let Some(rest) = value.strip_prefix(text) {
            return (prefix, rest);
        }
    }
    (Prefix::Eq, value)
}

pub(super) fn check_value(
    param: &Param,
    modifier: Option<&str>,
    value: &str,
) -> Result<(), EhrError> {
    let code = &param.code;
    match param.kind {
        ParamType::Date => {
            let (_, rest) = prefix_of(value);
            if dates::range(rest).is_none() {
                return Err(bad(
                    "search",
                    format!("{code}: {value:?} is not a date, date-time or instant"),
                ));
            }
        }
        ParamType::Number => {
            let (prefix, rest) = prefix_of(value);
            if rest.parse::<f64>().is_err() || matches!(prefix, Prefix::Sa | Prefix::Eb) {
                return Err(bad(
                    "search",
                    format!(
                        "{code}: {value:?} is not a number with an eq/ne/gt/lt/ge/le/ap prefix"
                    ),
                ));
            }
        }
        ParamType::Quantity => {
            let (prefix, rest) = prefix_of(value);
            let number = rest.split('|').next().unwrap_or_default();
            if number.parse::<f64>().is_err() || matches!(prefix, Prefix::Sa | Prefix::Eb) {
                return Err(bad(
                    "search",
                    format!("{code}: {value:?} is not a quantity (number|system|code)"),
                ));
            }
        }
        ParamType::Composite
            if param.components.len() < 2 || split_once_unescaped(value, '$').is_none() =>
        {
            return Err(bad(
                "search",
                format!("{code}: a composite value joins its parts with $"),
            ));
        }
        ParamType::Token if modifier == Some("of-type") && value.split('|').count() != 3 => {
            return Err(bad(
                "search",
                format!("{code}:of-type takes system|code|value"),
            ));
        }
        _ => {}
    }
    Ok(())
}

pub(super) fn parse_sort(rt: ResourceType, value: &str) -> Result<Vec<SortKey>, EhrError> {
    let mut keys = Vec::new();
    for item in value.split(',').filter(|s| !s.is_empty()) {
        let (descending, code) = match item.strip_prefix('-') {
            Some(code) => (true, code),
            None => (false, item),
        };
        let key = match code {
            "_id" => SortKey {
                param: None,
                column: Some("id"),
                descending,
            },
            "_lastUpdated" => SortKey {
                param: None,
                column: Some("last_updated"),
                descending,
            },
            _ => {
                let param = SearchParams::r4()
                    .get(rt, code)
                    .filter(|p| !matches!(p.kind, ParamType::Composite | ParamType::Special))
                    .ok_or_else(|| {
                        bad(
                            "_sort",
                            format!("{code} is not a sortable search parameter of {rt}"),
                        )
                    })?;
                SortKey {
                    param: Some(param.clone()),
                    column: None,
                    descending,
                }
            }
        };
        keys.push(key);
    }
    Ok(keys)
}

pub(super) fn parse_include(
    value: &str,
    iterate: bool,
    name: &'static str,
) -> Result<Include, EhrError> {
    let defs = Definitions::r4();
    let mut parts = value.split(':');
    let source = parts.next().unwrap_or_default();
    let source = defs.resource_type(source).ok_or_else(|| {
        bad(
            name,
            format!("{source:?} is not a resource type (use Type:parameter[:Target])"),
        )
    })?;
    let param = match parts.next() {
        None | Some("*") => None,
        Some(code) => Some(
            SearchParams::r4()
                .get(source, code)
                .filter(|p| p.kind == ParamType::Reference)
                .ok_or_else(|| {
                    bad(
                        name,
                        format!("{code} is not a reference parameter of {source}"),
                    )
                })?
                .clone(),
        ),
    };
    let target = match parts.next() {
        None => None,
        Some(t) => Some(
            defs.resource_type(t)
                .ok_or_else(|| bad(name, format!("{t:?} is not a resource type")))?,
        ),
    };
    Ok(Include {
        source,
        param,
        target,
        iterate,
    })
}
