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
    params::{Param, ParamType, SearchParams, Stored},
    text::fold,
};
use crate::{
    definitions::{Definitions, ResourceType},
    error::EhrError,
};

mod parse;
mod sql;

use parse::*;
use sql::*;
pub use sql::{code_match, compartment_params, compartment_row_codes};

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
    pub param: Option<Arc<Param>>,
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
        let codes = match compartment_row_codes(compartment.as_str(), member) {
            Some(codes) => codes.to_vec(),
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
            } if plain(c) && values.len() == 1 && !matches!(param.stored, Stored::Union(_)) => {
                match (param.kind, modifier.as_deref()) {
                    (ParamType::Token, None) => !matches!(
                        split_once_unescaped(&values[0], '|'),
                        Some((_, code)) if code.is_empty()
                    ),
                    (ParamType::Reference, _) => true,
                    _ => false,
                }
            }
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
                        let code = code_match(param, "", "s", binds);
                        format!(
                            "(SELECT {aggregate}(s.{column}) FROM {prefix}{table} s WHERE s.rid = r.rid AND {code})"
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
