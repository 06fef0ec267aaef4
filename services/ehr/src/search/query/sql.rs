//! The SQL of a search: one predicate per condition over the index tables, and the
//! compartment definitions.

use super::*;

pub(super) fn bind(binds: &mut Vec<Bind>, value: Bind) -> String {
    binds.push(value);
    format!("${}", binds.len())
}

/// `x.code = $n` over the index rows that hold `param`'s values of kind `suffix` (`""`,
/// `":text"`, …): `x.code IN (…)` for a union of other parameters, with the target type for
/// a reference parameter that is another's restricted to one target (see
/// [`Param::row_codes`]).
pub fn code_match(param: &Param, suffix: &str, x: &str, binds: &mut Vec<Bind>) -> String {
    let (codes, target) = param.row_codes(suffix);
    let mut out = match codes.as_slice() {
        [one] => format!("{x}.code = {}", bind(binds, Bind::Text(one.clone()))),
        many => {
            let list: Vec<String> = many
                .iter()
                .map(|c| bind(binds, Bind::Text(c.clone())))
                .collect();
            format!("{x}.code IN ({})", list.join(", "))
        }
    };
    if let Some(target) = target {
        let t = bind(binds, Bind::Text(target.to_string()));
        out.push_str(&format!(" AND {x}.target_type = {t}"));
    }
    out
}

/// Writes the predicate of `condition` on the row alias `row` (resources of type `rt`, or
/// index rows standing in for them). With `probe`, parameter conditions are probes correlated
/// on the resource key; otherwise id sets, `row.id IN (uncorrelated subquery)` (see
/// `probes_by_key`). Chains, `_has`, compartments and composites are id sets either way.
#[allow(clippy::too_many_arguments)]
pub(super) fn predicate(
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
            let code = code_match(param, "", &x, binds);
            sql.push_str(&format!(
                "{row}.id {}IN (SELECT {x}.id FROM {prefix}{table} {x} WHERE {x}.resource_type = {own_type} AND {code})",
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
            let code = code_match(param, "", &x, binds);
            let target_type = bind(binds, Bind::Text(target.as_str().to_string()));
            let t = format!("t{depth}");
            sql.push_str(&format!(
                "{row}.id IN (SELECT {x}.id FROM {prefix}sp_reference {x} JOIN {prefix}resource {t} ON {t}.resource_type = {x}.target_type AND {t}.id = {x}.target_id AND {t}.deleted = 0 \
                 WHERE {x}.resource_type = {own_type} AND {code} AND {x}.target_type = {target_type} AND "
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
            let code = code_match(param, "", &x, binds);
            let source_type = bind(binds, Bind::Text(source.as_str().to_string()));
            let t = format!("t{depth}");
            sql.push_str(&format!(
                "{row}.id IN (SELECT {x}.target_id FROM {prefix}sp_reference {x} JOIN {prefix}resource {t} ON {t}.resource_type = {x}.resource_type AND {t}.id = {x}.id AND {t}.deleted = 0 \
                 WHERE {x}.resource_type = {source_type} AND {code} AND {x}.target_type = {own_type} AND "
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
pub(super) enum Rows {
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
pub(super) fn index_rows(
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
    let (table, suffix) = match (param.kind, modifier) {
        (ParamType::Token, Some("text")) => ("sp_string", ":text"),
        (ParamType::Token, Some("of-type")) => ("sp_token", ":of-type"),
        (ParamType::Reference, Some("identifier")) => ("sp_token", ":identifier"),
        (kind, _) => (table_of(kind), ""),
    };
    let sqlite = !probes_by_key(prefix);
    let name = param.code.as_str();
    let walked = table == "sp_string"
        && suffix.is_empty()
        && param.stored == Stored::Own
        && WALKED_NAMES.contains(&name);
    let (hint, code) = match rows {
        Rows::ByKey if sqlite => (
            format!(" INDEXED BY {table}_resource"),
            code_match(param, suffix, x, binds),
        ),
        Rows::Source(SourceScan::Walk) if sqlite && walked => (
            format!(" INDEXED BY sp_string_walk_{name}"),
            format!("{x}.code = '{name}'"),
        ),
        Rows::Source(SourceScan::Lookup) if sqlite && walked => (
            " INDEXED BY sp_string_lookup".to_string(),
            code_match(param, suffix, x, binds),
        ),
        _ => (String::new(), code_match(param, suffix, x, binds)),
    };
    // A probe's rows are one resource's (its key): the type adds nothing but a clause for the
    // planner to weigh on every plan (subject+code pages: 5% less PostgreSQL time without).
    let own = if matches!(rows, Rows::ByKey) {
        String::new()
    } else {
        format!("{x}.resource_type = {own_type} AND ")
    };
    sql.push_str(&format!(
        "FROM {prefix}{table} {x}{hint} WHERE {own}{code} AND ("
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
pub(super) const WALKED_NAMES: &[&str] = &["name", "family", "given"];

pub(super) fn probes_by_key(prefix: &str) -> bool {
    prefix == "ehr."
}

pub(super) fn table_of(kind: ParamType) -> &'static str {
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
pub(super) fn composite(
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
    let (xa, xb) = (format!("{x}a"), format!("{x}b"));
    let code = code_match(param, "", &xa, binds);
    sql.push_str(&format!(
        "{row}.id IN (SELECT {xa}.id FROM {prefix}{ta} {xa} JOIN {prefix}{tb} {xb} ON {xb}.resource_type = {xa}.resource_type AND {xb}.id = {xa}.id AND {xb}.code = {xa}.code AND {xb}.grp = {xa}.grp \
         WHERE {xa}.resource_type = {own_type} AND {code} AND ("
    ));
    let as_param = |c: &crate::search::params::Component| Param {
        code: c.code.clone(),
        kind: c.kind,
        expression: c.expression.clone(),
        targets: Vec::new(),
        components: Vec::new(),
        stored: Stored::Own,
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
pub(super) fn value_condition(
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
pub(super) fn date_condition(
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
pub(super) fn date_condition_on(
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
pub(super) const COMPARTMENTS_JSON: &str =
    include_str!("../../../../../fhir-profiles/r4/compartments.json");

/// The codes of the reference rows that put a `member` resource in a `compartment`: its
/// [`compartment_params`], and the codes whose rows hold those parameters' values where they
/// are not stored under their own (Encounter's `patient` is `subject` pointing at a Patient;
/// see [`Stored`]). A row counts when it also points at the compartment's type. Worked out
/// once for every member: writes, searches and the audit relay ask for each resource.
pub fn compartment_row_codes(compartment: &str, member: &str) -> Option<&'static [String]> {
    static CODES: std::sync::OnceLock<std::collections::HashMap<(String, String), Vec<String>>> =
        std::sync::OnceLock::new();
    let all = CODES.get_or_init(|| {
        let mut all = std::collections::HashMap::new();
        for (compartment, members) in compartments().as_object().into_iter().flatten() {
            for member in members.as_object().into_iter().flat_map(|m| m.keys()) {
                if let Some(codes) = row_codes_of(compartment, member) {
                    all.insert((compartment.clone(), member.clone()), codes);
                }
            }
        }
        all
    });
    all.get(&(compartment.to_string(), member.to_string()))
        .map(Vec::as_slice)
}

fn row_codes_of(compartment: &str, member: &str) -> Option<Vec<String>> {
    let codes = compartment_params(compartment, member)?;
    let mut out = codes.clone();
    if let Some(rt) = Definitions::r4().resource_type(member) {
        for code in &codes {
            match SearchParams::r4().get(rt, code).map(|p| &p.stored) {
                Some(Stored::Union(sources)) => out.extend(sources.iter().cloned()),
                Some(Stored::Targets { code, target }) if target == compartment => {
                    out.push(code.clone())
                }
                _ => {}
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// The compartment definitions: compartment → member type → parameter codes.
fn compartments() -> &'static serde_json::Value {
    static COMPARTMENTS: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    COMPARTMENTS.get_or_init(|| {
        serde_json::from_str(COMPARTMENTS_JSON).expect(
            "fhir-profiles/r4/compartments.json is valid (regenerate with scripts/gen-r4-definitions.mjs)",
        )
    })
}

/// The parameters that put a `member` resource in a `compartment` (only the Patient
/// compartment is defined here); `None` when the type is not a member.
pub fn compartment_params(compartment: &str, member: &str) -> Option<Vec<String>> {
    let codes = compartments().get(compartment)?.get(member)?.as_array()?;
    Some(
        codes
            .iter()
            .filter_map(|c| c.as_str().map(str::to_string))
            .collect(),
    )
}
