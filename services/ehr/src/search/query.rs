//! Search requests: query parameters parsed against the R4 search parameters of a type, and
//! turned into one SQL statement over the index tables (the same text on both backends).
//!
//! Each condition is an `EXISTS` over the index table of its parameter's type; conditions
//! repeat for AND, values separated by commas OR inside one. Chains and `_has` nest the same
//! predicates over the referenced or referring resources.

use std::sync::Arc;

use super::{
    dates,
    keyset::{SortColumn, SortKind},
    params::{Param, ParamType, SearchParams},
    text::fold,
};
use crate::{
    definitions::{Definitions, ResourceType},
    error::EhrError,
};

/// A bind value of the generated SQL.
#[derive(Debug, Clone, PartialEq)]
pub enum Bind {
    Text(String),
    Int(i64),
    Float(f64),
}

/// Parameters that shape the result rather than select resources.
pub const RESULT_PARAMETERS: &[&str] = &[
    "_format",
    "_pretty",
    "_summary",
    "_elements",
    "_count",
    "_sort",
    "_total",
    "_include",
    "_revinclude",
    "_page_token",
    "_page_offset",
    "_contained",
    "_containedType",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// One selecting condition: a parameter (possibly reached through a chain or `_has`), its
/// modifier and its alternatives.
#[derive(Debug)]
enum Condition {
    Param {
        param: Arc<Param>,
        modifier: Option<String>,
        values: Vec<String>,
    },
    /// `ref:Type.rest=…`: resources whose `ref` points at a `Type` matching `rest`.
    Chain {
        param: Arc<Param>,
        target: ResourceType,
        inner: Box<Condition>,
    },
    /// `_has:Type:ref:rest=…`: resources pointed at by a `Type` (through `ref`) matching `rest`.
    Has {
        source: ResourceType,
        param: Arc<Param>,
        inner: Box<Condition>,
    },
    Missing {
        param: Arc<Param>,
        missing: bool,
    },
    /// Compartment membership: any of `codes` points at `target_type/target_id` (or the
    /// resource is that one itself).
    Compartment {
        codes: Vec<String>,
        target_type: String,
        target_id: String,
    },
}

/// A sort key.
#[derive(Debug)]
pub struct SortKey {
    param: Option<Arc<Param>>,
    /// `_id` or `_lastUpdated` on the resource row itself.
    column: Option<&'static str>,
    descending: bool,
}

/// `_include` / `_revinclude`: the source type, the reference parameter (None for `*`), the
/// target type, and whether it iterates.
#[derive(Debug, Clone)]
pub struct Include {
    pub source: ResourceType,
    pub param: Option<String>,
    pub target: Option<ResourceType>,
    pub iterate: bool,
}

/// `_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Total {
    None,
    Estimate,
    Accurate,
}

/// How a page reads its source condition's index rows. PostgreSQL's planner chooses by its
/// statistics (`Planner`); SQLite has none, so for a name prefix the store measures how
/// common the prefix is and says: `Walk` the name rows in id order (common names: a page
/// stops after a few dozen rows) or read the prefix's `Lookup` range and sort it (rare ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceScan {
    Planner,
    Walk,
    Lookup,
}

/// A parsed search.
#[derive(Debug)]
pub struct SearchRequest {
    pub resource_type: ResourceType,
    conditions: Vec<Condition>,
    pub sort: Vec<SortKey>,
    pub includes: Vec<Include>,
    pub revincludes: Vec<Include>,
    pub total: Total,
    /// Parameters ignored (lenient handling), for the Bundle's OperationOutcome.
    pub ignored: Vec<String>,
}

fn bad(name: &'static str, message: impl Into<String>) -> EhrError {
    EhrError::BadParameter {
        name,
        message: message.into(),
    }
}

/// Splits at unescaped commas (`\,` is a comma inside a value).
fn split_values(value: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n @ (',' | '$' | '|' | '\\')) => {
                    if n == ',' {
                        out.last_mut().expect("one").push(',');
                    } else {
                        out.last_mut().expect("one").push('\\');
                        out.last_mut().expect("one").push(n);
                    }
                }
                Some(n) => out.last_mut().expect("one").push(n),
                None => {}
            },
            ',' => out.push(String::new()),
            c => out.last_mut().expect("one").push(c),
        }
    }
    out
}

/// Splits at the first unescaped `sep`, unescaping both sides' `\sep`.
fn split_once_unescaped(value: &str, sep: char) -> Option<(String, String)> {
    let mut escaped = false;
    for (i, c) in value.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            c if c == sep && !escaped => {
                return Some((unescape(&value[..i]), value[i + 1..].to_string()));
            }
            _ => escaped = false,
        }
    }
    None
}

fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl SearchRequest {
    /// Parses the query parameters of a search on `rt`. Unknown parameters are refused when
    /// `strict`, else ignored and listed in `ignored`.
    pub fn parse(
        rt: ResourceType,
        params: &[(String, String)],
        strict: bool,
    ) -> Result<SearchRequest, EhrError> {
        let mut request = SearchRequest {
            resource_type: rt,
            conditions: Vec::new(),
            sort: Vec::new(),
            includes: Vec::new(),
            revincludes: Vec::new(),
            total: Total::None,
            ignored: Vec::new(),
        };
        for (key, value) in params {
            if key.contains('\0') || value.contains('\0') {
                return Err(bad(
                    "search",
                    "search parameters may not contain NUL characters",
                ));
            }
            match key.as_str() {
                "_sort" => request.sort = parse_sort(rt, value)?,
                "_total" => {
                    request.total = match value.as_str() {
                        "none" => Total::None,
                        "estimate" => Total::Estimate,
                        "accurate" => Total::Accurate,
                        _ => return Err(bad("_total", "must be none, estimate or accurate")),
                    }
                }
                "_include" | "_include:iterate" | "_include:recurse" => request
                    .includes
                    .push(parse_include(value, key != "_include", "_include")?),
                "_revinclude" | "_revinclude:iterate" | "_revinclude:recurse" => request
                    .revincludes
                    .push(parse_include(value, key != "_revinclude", "_revinclude")?),
                k if RESULT_PARAMETERS.contains(&k) => {}
                _ => match parse_condition(rt, key, value) {
                    Ok(condition) => request.conditions.push(condition),
                    Err(Unknown(name)) if !strict => request.ignored.push(name),
                    Err(Unknown(name)) => {
                        return Err(bad(
                            "search",
                            format!("{name} is not a search parameter of {rt}"),
                        ));
                    }
                    Err(Invalid(error)) => return Err(error),
                },
            }
        }
        Ok(request)
    }

    /// Limits the search to the compartment of `compartment/id` (R4 CompartmentDefinition):
    /// `Patient/123/Observation`. Types outside the compartment are refused.
    pub fn in_compartment(&mut self, compartment: ResourceType, id: &str) -> Result<(), EhrError> {
        let member = self.resource_type.as_str();
        let codes = match compartment_params(compartment.as_str(), member) {
            Some(codes) => codes,
            // The compartment's own type: the resource itself.
            None if member == compartment.as_str() => Vec::new(),
            None => {
                return Err(bad(
                    "compartment",
                    format!("{member} is not in the {compartment} compartment"),
                ));
            }
        };
        self.conditions.push(Condition::Compartment {
            codes,
            target_type: compartment.as_str().to_string(),
            target_id: id.to_string(),
        });
        Ok(())
    }

    /// The condition whose index rows stand in for the resource table as the
    /// rows a search starts from (`FROM <index table> r`, the other conditions probing by key).
    /// Index rows exist for current resources only and carry the resource's type, id and key,
    /// so the resource table is not needed to find matches. A page takes the first positive
    /// equality on a token or reference: its lookup-index rows come in id order, so a page
    /// walks them and stops (a LOINC code's observations since a date: 282 resources and 416
    /// probes walked in id order -> 42 index rows and 42 probes), and the planner may still
    /// start from another condition's rows. A count, which reads every match anyway, also
    /// takes a first positive condition of another kind. A page with neither may start from
    /// a name prefix (`name`, `family`, `given`): partial indexes hold those rows in id order
    /// with their folded value (`sp_string_name_walk` on PostgreSQL, one per code on SQLite),
    /// so a common name's page walks and stops while a rare one takes the lookup range
    /// (migrations 5 and 6; see [`SourceScan`]). None when a condition or sort key needs the
    /// resource row itself (`_lastUpdated`) or, for pages, when sorting.
    pub fn source_condition(&self, for_count: bool) -> Option<usize> {
        let row_time = |c: &Condition| matches!(c, Condition::Param { param, .. } if param.code == "_lastUpdated");
        if self.conditions.iter().any(row_time) || (!for_count && !self.sort.is_empty()) {
            return None;
        }
        let plain = |c: &Condition| match c {
            Condition::Param {
                param, modifier, ..
            } => {
                param.kind != ParamType::Composite
                    && param.code != "_id"
                    && modifier.as_deref() != Some("not")
            }
            _ => false,
        };
        let in_id_order = |c: &Condition| match c {
            Condition::Param {
                param,
                modifier,
                values,
            } if plain(c) && values.len() == 1 => match (param.kind, modifier.as_deref()) {
                (ParamType::Token, None) => !matches!(
                    split_once_unescaped(&values[0], '|'),
                    Some((_, code)) if code.is_empty()
                ),
                (ParamType::Reference, _) => true,
                _ => false,
            },
            _ => false,
        };
        let walked_name = |c: &Condition| match c {
            Condition::Param {
                param,
                modifier: None,
                values,
            } => {
                plain(c)
                    && values.len() == 1
                    && param.kind == ParamType::String
                    && WALKED_NAMES.contains(&param.code.as_str())
            }
            _ => false,
        };
        self.conditions
            .iter()
            .position(in_id_order)
            .or_else(|| self.conditions.iter().position(walked_name))
            .or_else(|| {
                if for_count {
                    self.conditions.iter().position(plain)
                } else {
                    None
                }
            })
    }

    /// SQLite: when a page starts from a name prefix, a statement counting that prefix's
    /// lookup rows up to `cap` (`$1` the type): at the cap the name is common and the page
    /// walks; below it the page reads the range. `None` for other pages.
    pub fn name_source_probe(&self, prefix: &str, cap: usize) -> Option<(String, Vec<Bind>)> {
        let i = self.source_condition(false)?;
        let Condition::Param { param, .. } = &self.conditions[i] else {
            return None;
        };
        if param.kind != ParamType::String || probes_by_key(prefix) {
            return None;
        }
        let mut binds = vec![Bind::Text(self.resource_type.as_str().to_string())];
        let mut rows = String::new();
        self.write_source_rows(i, prefix, SourceScan::Lookup, &mut rows, &mut binds)
            .ok()?;
        Some((
            format!("SELECT COUNT(*) FROM (SELECT 1 {rows} LIMIT {cap})"),
            binds,
        ))
    }

    /// `FROM <index table> r WHERE …`: condition `i`'s index rows as the rows a search starts
    /// from, read as `scan` says (`$1` is the type). False, writing nothing, when condition `i`
    /// has no index rows of its own.
    fn write_source_rows(
        &self,
        i: usize,
        prefix: &str,
        scan: SourceScan,
        sql: &mut String,
        binds: &mut Vec<Bind>,
    ) -> Result<bool, EhrError> {
        let Condition::Param {
            param,
            modifier,
            values,
        } = &self.conditions[i]
        else {
            return Ok(false);
        };
        index_rows(
            param,
            modifier.as_deref(),
            values,
            "$1",
            prefix,
            "r",
            Rows::Source(scan),
            sql,
            binds,
        )?;
        Ok(true)
    }

    /// `FROM <table> r WHERE …`: the rows a search starts from — the index rows of condition
    /// `source` (see [`SearchRequest::source_condition`]), or the current resources of the
    /// type in `table` — followed by every other condition. `$1` is the resource type.
    #[allow(clippy::too_many_arguments)]
    pub fn write_from(
        &self,
        prefix: &str,
        table: &str,
        source: Option<usize>,
        scan: SourceScan,
        sql: &mut String,
        binds: &mut Vec<Bind>,
    ) -> Result<(), EhrError> {
        let from_index = match source {
            Some(i) => self.write_source_rows(i, prefix, scan, sql, binds)?,
            None => false,
        };
        if !from_index {
            sql.push_str(&format!(
                "FROM {table} r WHERE r.resource_type = $1 AND r.deleted = 0"
            ));
        }
        // Few rows come from a source (a page stops early): the other conditions probe each
        // one by key, on SQLite too, which otherwise builds every condition's id set.
        let probe = source.is_some() || probes_by_key(prefix);
        for (i, condition) in self.conditions.iter().enumerate() {
            if Some(i) != source {
                sql.push_str(" AND ");
                predicate(
                    condition,
                    self.resource_type,
                    "r",
                    prefix,
                    sql,
                    binds,
                    0,
                    probe,
                )?;
            }
        }
        Ok(())
    }

    /// The SQL of how many resources match (`$1` is the type; `table` the resource table).
    pub fn count_sql(&self, prefix: &str, table: &str) -> Result<(String, Vec<Bind>), EhrError> {
        let mut binds = vec![Bind::Text(self.resource_type.as_str().to_string())];
        let source = self.source_condition(true);
        let mut sql = String::from(if source.is_some() {
            "SELECT COUNT(DISTINCT r.rid) "
        } else {
            "SELECT COUNT(*) "
        });
        self.write_from(
            prefix,
            table,
            source,
            SourceScan::Planner,
            &mut sql,
            &mut binds,
        )?;
        Ok((sql, binds))
    }

    /// The sort keys as SQL over the resource row `r`: expression, direction, value kind.
    pub fn order_by(&self, prefix: &str, binds: &mut Vec<Bind>) -> Vec<SortColumn> {
        self.sort
            .iter()
            .map(|key| {
                let expression = match (&key.column, &key.param) {
                    (Some(column), _) => format!("r.{column}"),
                    (None, Some(param)) => {
                        let (table, column) = match param.kind {
                            ParamType::String => ("sp_string", "folded"),
                            ParamType::Date if key.descending => ("sp_date", "high"),
                            ParamType::Date => ("sp_date", "low"),
                            ParamType::Number | ParamType::Quantity => ("sp_number", "value"),
                            ParamType::Reference => ("sp_reference", "target_id"),
                            ParamType::Uri => ("sp_uri", "value"),
                            _ => ("sp_token", "value"),
                        };
                        let aggregate = if key.descending { "MAX" } else { "MIN" };
                        let code = bind(binds, Bind::Text(param.code.clone()));
                        format!(
                            "(SELECT {aggregate}(s.{column}) FROM {prefix}{table} s WHERE s.rid = r.rid AND s.code = {code})"
                        )
                    }
                    (None, None) => "r.id".to_string(),
                };
                SortColumn {
                    expression,
                    descending: key.descending,
                    kind: key.kind(),
                }
            })
            .collect()
    }

    /// The value kinds of the sort keys (what a sorted page's position carries).
    pub fn sort_kinds(&self) -> Vec<SortKind> {
        self.sort.iter().map(SortKey::kind).collect()
    }
}

impl SortKey {
    /// What the key's values are in SQL: the column `order_by` sorts on holds text
    /// (strings, tokens, references, uris, ids), integers (dates, `_lastUpdated`, in
    /// microseconds or milliseconds) or floats (numbers, quantities).
    fn kind(&self) -> SortKind {
        match (self.column, &self.param) {
            (Some("id"), _) | (None, None) => SortKind::Text,
            (Some(_), _) => SortKind::Int,
            (None, Some(param)) => match param.kind {
                ParamType::Date => SortKind::Int,
                ParamType::Number | ParamType::Quantity => SortKind::Float,
                _ => SortKind::Text,
            },
        }
    }
}

/// Why a condition could not be parsed.
enum ConditionError {
    Unknown(String),
    Invalid(EhrError),
}
use ConditionError::{Invalid, Unknown};

impl From<EhrError> for ConditionError {
    fn from(e: EhrError) -> Self {
        Invalid(e)
    }
}

fn parse_condition(rt: ResourceType, key: &str, value: &str) -> Result<Condition, ConditionError> {
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

fn check_modifier(param: &Param, modifier: Option<&str>) -> Result<(), EhrError> {
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

fn prefix_of(value: &str) -> (Prefix, &str) {
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

fn check_value(param: &Param, modifier: Option<&str>, value: &str) -> Result<(), EhrError> {
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

fn parse_sort(rt: ResourceType, value: &str) -> Result<Vec<SortKey>, EhrError> {
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

fn parse_include(value: &str, iterate: bool, name: &'static str) -> Result<Include, EhrError> {
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
        Some(code) => {
            SearchParams::r4()
                .get(source, code)
                .filter(|p| p.kind == ParamType::Reference)
                .ok_or_else(|| {
                    bad(
                        name,
                        format!("{code} is not a reference parameter of {source}"),
                    )
                })?;
            Some(code.to_string())
        }
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

fn bind(binds: &mut Vec<Bind>, value: Bind) -> String {
    binds.push(value);
    format!("${}", binds.len())
}

/// Writes the predicate of `condition` on the row alias `row` (resources of type `rt`, or
/// index rows standing in for them). With `probe`, parameter conditions are probes correlated
/// on the resource key; otherwise id sets, `row.id IN (uncorrelated subquery)` (see
/// `probes_by_key`). Chains, `_has`, compartments and composites are id sets either way.
#[allow(clippy::too_many_arguments)]
fn predicate(
    condition: &Condition,
    rt: ResourceType,
    row: &str,
    prefix: &str,
    sql: &mut String,
    binds: &mut Vec<Bind>,
    depth: usize,
    probe: bool,
) -> Result<(), EhrError> {
    if depth > 4 {
        return Err(bad("search", "chains and _has nest at most 4 deep"));
    }
    let x = format!("x{depth}");
    let own_type = bind(binds, Bind::Text(rt.as_str().to_string()));
    match condition {
        Condition::Missing { param, missing } => {
            let table = table_of(param.kind);
            let code = bind(binds, Bind::Text(param.code.clone()));
            sql.push_str(&format!(
                "{row}.id {}IN (SELECT {x}.id FROM {prefix}{table} {x} WHERE {x}.resource_type = {own_type} AND {x}.code = {code})",
                if *missing { "NOT " } else { "" }
            ));
        }
        Condition::Compartment {
            codes,
            target_type,
            target_id,
        } => {
            let t = bind(binds, Bind::Text(target_type.clone()));
            let i = bind(binds, Bind::Text(target_id.clone()));
            let list: Vec<String> = codes
                .iter()
                .map(|c| bind(binds, Bind::Text(c.clone())))
                .collect();
            sql.push_str(&format!(
                "(({row}.resource_type = {t} AND {row}.id = {i}) OR {row}.id IN (SELECT {x}.id FROM {prefix}sp_reference {x} WHERE {x}.resource_type = {own_type} AND {x}.code IN ({}) AND {x}.target_type = {t} AND {x}.target_id = {i}))",
                if list.is_empty() { "''".to_string() } else { list.join(", ") }
            ));
        }
        Condition::Chain {
            param,
            target,
            inner,
        } => {
            let code = bind(binds, Bind::Text(param.code.clone()));
            let target_type = bind(binds, Bind::Text(target.as_str().to_string()));
            let t = format!("t{depth}");
            sql.push_str(&format!(
                "{row}.id IN (SELECT {x}.id FROM {prefix}sp_reference {x} JOIN {prefix}resource {t} ON {t}.resource_type = {x}.target_type AND {t}.id = {x}.target_id AND {t}.deleted = 0 \
                 WHERE {x}.resource_type = {own_type} AND {x}.code = {code} AND {x}.target_type = {target_type} AND "
            ));
            predicate(
                inner,
                *target,
                &t,
                prefix,
                sql,
                binds,
                depth + 1,
                probes_by_key(prefix),
            )?;
            sql.push(')');
        }
        Condition::Has {
            source,
            param,
            inner,
        } => {
            let code = bind(binds, Bind::Text(param.code.clone()));
            let source_type = bind(binds, Bind::Text(source.as_str().to_string()));
            let t = format!("t{depth}");
            sql.push_str(&format!(
                "{row}.id IN (SELECT {x}.target_id FROM {prefix}sp_reference {x} JOIN {prefix}resource {t} ON {t}.resource_type = {x}.resource_type AND {t}.id = {x}.id AND {t}.deleted = 0 \
                 WHERE {x}.resource_type = {source_type} AND {x}.code = {code} AND {x}.target_type = {own_type} AND "
            ));
            predicate(
                inner,
                *source,
                &t,
                prefix,
                sql,
                binds,
                depth + 1,
                probes_by_key(prefix),
            )?;
            sql.push(')');
        }
        Condition::Param {
            param,
            modifier,
            values,
        } => {
            let negate = modifier.as_deref() == Some("not");
            if param.kind == ParamType::Composite {
                return composite(param, values, row, &own_type, prefix, sql, binds, &x);
            }
            // _id and _lastUpdated are columns of the resource row, not index rows.
            if param.code == "_id" || param.code == "_lastUpdated" {
                sql.push_str(if negate { "NOT (" } else { "(" });
                for (i, value) in values.iter().enumerate() {
                    if i > 0 {
                        sql.push_str(" OR ");
                    }
                    if param.code == "_id" {
                        let v = bind(binds, Bind::Text(unescape(value)));
                        sql.push_str(&format!("{row}.id = {v}"));
                    } else {
                        let (prefix, rest) = prefix_of(value);
                        let (low, high) = dates::range(rest).expect("checked when parsed");
                        // last_updated is in microseconds; as a range, one instant.
                        let column = format!("({row}.last_updated / 1000)");
                        sql.push('(');
                        date_condition_on(prefix, low, high, &column, &column, sql, binds);
                        sql.push(')');
                    }
                }
                sql.push(')');
                return Ok(());
            }
            let not = if negate { "NOT " } else { "" };
            let mut rows = String::new();
            index_rows(
                param,
                modifier.as_deref(),
                values,
                &own_type,
                prefix,
                &x,
                if probe { Rows::ByKey } else { Rows::Set },
                &mut rows,
                binds,
            )?;
            if probe {
                sql.push_str(&format!(
                    "{not}EXISTS (SELECT 1 {rows} AND {x}.rid = {row}.rid)"
                ));
            } else {
                sql.push_str(&format!("{row}.id {not}IN (SELECT {x}.id {rows})"));
            }
        }
    }
    Ok(())
}

/// Which index rows [`index_rows`] writes, and so which index they are read through.
#[derive(Debug, Clone, Copy)]
enum Rows {
    /// A search's source rows, read as `SourceScan` says.
    Source(SourceScan),
    /// One resource's rows: the caller adds `x.rid = …`.
    ByKey,
    /// Every matching row, as an id set.
    Set,
}

/// `FROM <index table> x WHERE …`: the index rows of `rt` (bound as `own_type`) whose values
/// match one of `values` for `param` with `modifier` (`:not` is the caller's to apply).
/// A probe ([`Rows::ByKey`]) leaves `own_type` unused: the key names the resource. SQLite,
/// planning without statistics, otherwise prefers the lookup index (more equalities) and
/// reads every row of the value per probe (a code's 125k rows for each of a patient's
/// observations), so there the probe names the per-resource index; and a name source names
/// the index its [`SourceScan`] chose: the walk is one partial index per name code
/// (`sp_string_walk_<code>`, migration 6), with the code written out, as a partial index
/// serves a statement only when the statement's WHERE repeats the index's condition.
#[allow(clippy::too_many_arguments)]
fn index_rows(
    param: &Param,
    modifier: Option<&str>,
    values: &[String],
    own_type: &str,
    prefix: &str,
    x: &str,
    rows: Rows,
    sql: &mut String,
    binds: &mut Vec<Bind>,
) -> Result<(), EhrError> {
    let (table, code) = match (param.kind, modifier) {
        (ParamType::Token, Some("text")) => ("sp_string", format!("{}:text", param.code)),
        (ParamType::Token, Some("of-type")) => ("sp_token", format!("{}:of-type", param.code)),
        (ParamType::Reference, Some("identifier")) => {
            ("sp_token", format!("{}:identifier", param.code))
        }
        (kind, _) => (table_of(kind), param.code.clone()),
    };
    let sqlite = !probes_by_key(prefix);
    let walked = table == "sp_string" && WALKED_NAMES.contains(&code.as_str());
    let (hint, code) = match rows {
        Rows::ByKey if sqlite => (
            format!(" INDEXED BY {table}_resource"),
            bind(binds, Bind::Text(code)),
        ),
        Rows::Source(SourceScan::Walk) if sqlite && walked => (
            format!(" INDEXED BY sp_string_walk_{code}"),
            format!("'{code}'"),
        ),
        Rows::Source(SourceScan::Lookup) if sqlite && walked => (
            " INDEXED BY sp_string_lookup".to_string(),
            bind(binds, Bind::Text(code)),
        ),
        _ => (String::new(), bind(binds, Bind::Text(code))),
    };
    // A probe's rows are one resource's (its key): the type adds nothing but a clause for the
    // planner to weigh on every plan (subject+code pages: 5% less PostgreSQL time without).
    let own = if matches!(rows, Rows::ByKey) {
        String::new()
    } else {
        format!("{x}.resource_type = {own_type} AND ")
    };
    sql.push_str(&format!(
        "FROM {prefix}{table} {x}{hint} WHERE {own}{x}.code = {code} AND ("
    ));
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            sql.push_str(" OR ");
        }
        sql.push('(');
        value_condition(param, modifier, value, x, sql, binds)?;
        sql.push(')');
    }
    sql.push(')');
    Ok(())
}

/// Whether a parameter condition is written as a probe correlated on the resource key
/// (`EXISTS … WHERE x.rid = r.rid`) rather than as a set of ids (`r.id IN (SELECT x.id …)`).
/// PostgreSQL turns either into a semi-join it may run from the index side (hash or nested
/// loop) or from the resource side; only the key form makes the resource side cheap for range
/// conditions (dates, numbers, string prefixes), one probe of the per-resource index per
/// candidate, so a first page in id order stops after a few dozen probes instead of reading
/// every match. SQLite runs a correlated EXISTS once per outer row and cannot go the other
/// way, so it keeps the id sets where a search walks the resource table; where a search starts
/// from one condition's index rows it probes too (`SearchRequest::write_from`). Index tables
/// are `ehr.*` on PostgreSQL, `ehr_*` on SQLite.
/// String parameters whose rows the name walk indexes keep in id order (their partial index
/// conditions name the same codes).
const WALKED_NAMES: &[&str] = &["name", "family", "given"];

fn probes_by_key(prefix: &str) -> bool {
    prefix == "ehr."
}

fn table_of(kind: ParamType) -> &'static str {
    match kind {
        ParamType::String => "sp_string",
        ParamType::Reference => "sp_reference",
        ParamType::Date => "sp_date",
        ParamType::Number | ParamType::Quantity => "sp_number",
        ParamType::Uri => "sp_uri",
        _ => "sp_token",
    }
}

/// A composite value `a$b`: both components in one group of the same resource.
#[allow(clippy::too_many_arguments)]
fn composite(
    param: &Param,
    values: &[String],
    row: &str,
    own_type: &str,
    prefix: &str,
    sql: &mut String,
    binds: &mut Vec<Bind>,
    x: &str,
) -> Result<(), EhrError> {
    let (first, second) = (&param.components[0], &param.components[1]);
    let (ta, tb) = (table_of(first.kind), table_of(second.kind));
    let code = bind(binds, Bind::Text(param.code.clone()));
    let (xa, xb) = (format!("{x}a"), format!("{x}b"));
    sql.push_str(&format!(
        "{row}.id IN (SELECT {xa}.id FROM {prefix}{ta} {xa} JOIN {prefix}{tb} {xb} ON {xb}.resource_type = {xa}.resource_type AND {xb}.id = {xa}.id AND {xb}.code = {xa}.code AND {xb}.grp = {xa}.grp \
         WHERE {xa}.resource_type = {own_type} AND {xa}.code = {code} AND ("
    ));
    let as_param = |c: &super::params::Component| Param {
        code: c.code.clone(),
        kind: c.kind,
        expression: c.expression.clone(),
        targets: Vec::new(),
        components: Vec::new(),
    };
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            sql.push_str(" OR ");
        }
        let (a, b) = split_once_unescaped(value, '$').expect("checked when parsed");
        sql.push_str("((");
        value_condition(&as_param(first), None, &a, &xa, sql, binds)?;
        sql.push_str(") AND (");
        value_condition(&as_param(second), None, &b, &xb, sql, binds)?;
        sql.push_str("))");
    }
    sql.push_str("))");
    Ok(())
}

/// The condition one search value puts on an index row `x`.
fn value_condition(
    param: &Param,
    modifier: Option<&str>,
    value: &str,
    x: &str,
    sql: &mut String,
    binds: &mut Vec<Bind>,
) -> Result<(), EhrError> {
    match (param.kind, modifier) {
        (ParamType::String, Some("exact")) => {
            let v = bind(binds, Bind::Text(unescape(value)));
            sql.push_str(&format!("{x}.exact = {v}"));
        }
        (ParamType::String, Some("contains")) => {
            let pattern = fold(&unescape(value))
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            let v = bind(binds, Bind::Text(format!("%{pattern}%")));
            sql.push_str(&format!("{x}.folded LIKE {v} ESCAPE '\\'"));
        }
        (ParamType::String, _) | (ParamType::Token, Some("text")) => {
            let folded = fold(&unescape(value));
            let low = bind(binds, Bind::Text(folded.clone()));
            let high = bind(binds, Bind::Text(format!("{folded}\u{10FFFF}")));
            sql.push_str(&format!("{x}.folded >= {low} AND {x}.folded < {high}"));
        }
        (ParamType::Token, Some("of-type")) => {
            let parts: Vec<&str> = value.splitn(3, '|').collect();
            let system = bind(binds, Bind::Text(unescape(parts[0])));
            let v = bind(
                binds,
                Bind::Text(format!("{}|{}", unescape(parts[1]), unescape(parts[2]))),
            );
            sql.push_str(&format!("{x}.system = {system} AND {x}.value = {v}"));
        }
        (ParamType::Token, _) | (ParamType::Reference, Some("identifier")) => {
            match split_once_unescaped(value, '|') {
                None => {
                    let v = bind(binds, Bind::Text(unescape(value)));
                    sql.push_str(&format!("{x}.value = {v}"));
                }
                Some((system, code)) => {
                    let code = unescape(&code);
                    let s = bind(binds, Bind::Text(system));
                    if code.is_empty() {
                        sql.push_str(&format!("{x}.system = {s}"));
                    } else {
                        let c = bind(binds, Bind::Text(code));
                        sql.push_str(&format!("{x}.system = {s} AND {x}.value = {c}"));
                    }
                }
            }
        }
        (ParamType::Reference, _) => {
            let value = unescape(value);
            let (target_type, target_id) = match value.rsplit_once('/') {
                Some((path, id)) if !value.contains("://") => (
                    Some(path.rsplit('/').next().unwrap_or(path).to_string()),
                    id.to_string(),
                ),
                Some(_) => {
                    // An absolute URL: the stored URL, or its Type/id tail.
                    let u = bind(binds, Bind::Text(value.clone()));
                    let segments: Vec<&str> = value.rsplitn(3, '/').collect();
                    if let [id, rt, _] = segments.as_slice()
                        && Definitions::r4().resource_type(rt).is_some()
                    {
                        let t = bind(binds, Bind::Text(rt.to_string()));
                        let i = bind(binds, Bind::Text(id.to_string()));
                        sql.push_str(&format!(
                            "{x}.url = {u} OR ({x}.target_type = {t} AND {x}.target_id = {i})"
                        ));
                    } else {
                        sql.push_str(&format!("{x}.url = {u}"));
                    }
                    return Ok(());
                }
                None => (modifier.map(str::to_string), value.clone()),
            };
            let i = bind(binds, Bind::Text(target_id));
            sql.push_str(&format!("{x}.target_id = {i}"));
            if let Some(t) = target_type {
                let t = bind(binds, Bind::Text(t));
                sql.push_str(&format!(" AND {x}.target_type = {t}"));
            }
        }
        (ParamType::Uri, Some("below")) => {
            let low = bind(binds, Bind::Text(value.to_string()));
            let high = bind(binds, Bind::Text(format!("{value}\u{10FFFF}")));
            sql.push_str(&format!("{x}.value >= {low} AND {x}.value < {high}"));
        }
        (ParamType::Uri, Some("above")) => {
            let v = bind(binds, Bind::Text(value.to_string()));
            sql.push_str(&format!("substr({v}, 1, length({x}.value)) = {x}.value"));
        }
        (ParamType::Uri, _) => {
            let v = bind(binds, Bind::Text(unescape(value)));
            sql.push_str(&format!("{x}.value = {v}"));
        }
        (ParamType::Date, _) => {
            let (prefix, rest) = prefix_of(value);
            let (low, high) = dates::range(rest).expect("checked when parsed");
            date_condition(prefix, low, high, x, sql, binds);
        }
        (ParamType::Number | ParamType::Quantity, _) => {
            let (prefix, rest) = prefix_of(value);
            let mut parts = rest.splitn(3, '|');
            let number = parts.next().unwrap_or_default();
            let v: f64 = number.parse().map_err(|_| bad("search", "not a number"))?;
            // The precision written: 100 means [99.5, 100.5).
            let decimals = number.split_once('.').map_or(0, |(_, f)| f.len()) as i32;
            let half = 0.5 * 10f64.powi(-decimals);
            let cond = match prefix {
                Prefix::Eq => format!(
                    "{x}.value >= {} AND {x}.value < {}",
                    bind(binds, Bind::Float(v - half)),
                    bind(binds, Bind::Float(v + half))
                ),
                Prefix::Ne => format!(
                    "({x}.value < {} OR {x}.value >= {})",
                    bind(binds, Bind::Float(v - half)),
                    bind(binds, Bind::Float(v + half))
                ),
                Prefix::Gt => format!("{x}.value > {}", bind(binds, Bind::Float(v))),
                Prefix::Lt => format!("{x}.value < {}", bind(binds, Bind::Float(v))),
                Prefix::Ge => format!("{x}.value >= {}", bind(binds, Bind::Float(v))),
                Prefix::Le => format!("{x}.value <= {}", bind(binds, Bind::Float(v))),
                Prefix::Ap => {
                    let d = (v.abs() * 0.1).max(half);
                    format!(
                        "{x}.value >= {} AND {x}.value <= {}",
                        bind(binds, Bind::Float(v - d)),
                        bind(binds, Bind::Float(v + d))
                    )
                }
                Prefix::Sa | Prefix::Eb => {
                    return Err(bad("search", "sa and eb do not apply to numbers"));
                }
            };
            sql.push_str(&cond);
            if param.kind == ParamType::Quantity {
                let system = parts.next().map(unescape).unwrap_or_default();
                let unit = parts.next().map(unescape).unwrap_or_default();
                if !system.is_empty() {
                    let s = bind(binds, Bind::Text(system));
                    sql.push_str(&format!(" AND {x}.system = {s}"));
                }
                if !unit.is_empty() {
                    let u = bind(binds, Bind::Text(unit));
                    sql.push_str(&format!(" AND {x}.unit = {u}"));
                }
            }
        }
        (ParamType::Composite | ParamType::Special, _) => {
            return Err(bad(
                "search",
                format!("{} cannot be searched this way", param.code),
            ));
        }
    }
    Ok(())
}

/// R4 date comparison of the target range [x.low, x.high] with the search range [low, high].
fn date_condition(
    prefix: Prefix,
    low: i64,
    high: i64,
    x: &str,
    sql: &mut String,
    binds: &mut Vec<Bind>,
) {
    let (target_low, target_high) = (format!("{x}.low"), format!("{x}.high"));
    date_condition_on(prefix, low, high, &target_low, &target_high, sql, binds);
}

/// [`date_condition`] on any two expressions holding the target's range.
#[allow(clippy::too_many_arguments)]
fn date_condition_on(
    prefix: Prefix,
    low: i64,
    high: i64,
    tl: &str,
    th: &str,
    sql: &mut String,
    binds: &mut Vec<Bind>,
) {
    let l = bind(binds, Bind::Int(low));
    let h = bind(binds, Bind::Int(high));
    let within = format!("({tl} >= {l} AND {th} <= {h})");
    let cond = match prefix {
        Prefix::Eq => within,
        Prefix::Ne => format!("NOT {within}"),
        Prefix::Gt => format!("{th} > {h}"),
        Prefix::Lt => format!("{tl} < {l}"),
        Prefix::Ge => format!("({th} > {h} OR {within})"),
        Prefix::Le => format!("({tl} < {l} OR {within})"),
        Prefix::Sa => format!("{tl} > {h}"),
        Prefix::Eb => format!("{th} < {l}"),
        Prefix::Ap => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
            let slack = ((now - low).abs() / 10).max(high - low);
            let al = bind(binds, Bind::Int(low.saturating_sub(slack)));
            let ah = bind(binds, Bind::Int(high.saturating_add(slack)));
            format!("({tl} <= {ah} AND {th} >= {al})")
        }
    };
    sql.push_str(&cond);
}
const COMPARTMENTS_JSON: &str = include_str!("../../../../fhir-profiles/r4/compartments.json");

/// The parameters that put a `member` resource in a `compartment` (only the Patient
/// compartment is defined here); `None` when the type is not a member.
pub fn compartment_params(compartment: &str, member: &str) -> Option<Vec<String>> {
    static COMPARTMENTS: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    let all = COMPARTMENTS.get_or_init(|| {
        serde_json::from_str(COMPARTMENTS_JSON).expect(
            "fhir-profiles/r4/compartments.json is valid (regenerate with scripts/gen-r4-definitions.mjs)",
        )
    });
    let codes = all.get(compartment)?.get(member)?.as_array()?;
    Some(
        codes
            .iter()
            .filter_map(|c| c.as_str().map(str::to_string))
            .collect(),
    )
}
