//! The check that parameters searched through other parameters' rows (see [`Stored`]) stand
//! for exactly their own values.

use serde_json::Value;

use super::{IndexRows, extract, extract_unshared};
use crate::{
    definitions::ResourceType,
    search::params::{SearchParams, Stored},
};

/// One index row as [`stands_for`] compares them: code, group, target type (references),
/// table and values.
type FlatRow = (String, i64, Option<String>, String);

fn flat(rows: &IndexRows) -> Vec<FlatRow> {
    let mut out = Vec::with_capacity(rows.len());
    for (c, g, folded, exact) in &rows.strings {
        out.push((c.clone(), *g, None, format!("string {folded:?} {exact:?}")));
    }
    for (c, g, system, code) in &rows.tokens {
        out.push((c.clone(), *g, None, format!("token {system:?} {code:?}")));
    }
    for (c, g, t, id, url) in &rows.references {
        out.push((
            c.clone(),
            *g,
            Some(t.clone()),
            format!("reference {t:?} {id:?} {url:?}"),
        ));
    }
    for (c, g, low, high) in &rows.dates {
        out.push((c.clone(), *g, None, format!("date {low} {high}")));
    }
    for (c, g, v, system, unit) in &rows.numbers {
        out.push((
            c.clone(),
            *g,
            None,
            format!("number {v:e} {system:?} {unit:?}"),
        ));
    }
    for (c, g, v) in &rows.uris {
        out.push((c.clone(), *g, None, format!("uri {v:?}")));
    }
    out
}

/// The values of the rows with one of `codes` (and `target`, if given), one set per
/// composite group (a plain row is a group of its own), whatever the codes and group numbers.
fn values_of(
    rows: &[FlatRow],
    codes: &[String],
    target: Option<&str>,
) -> std::collections::BTreeSet<Vec<String>> {
    let mut groups: std::collections::BTreeMap<(String, i64), Vec<String>> = Default::default();
    let mut out = std::collections::BTreeSet::new();
    for (code, group, t, value) in rows {
        if !codes.contains(code) || target.is_some_and(|target| t.as_deref() != Some(target)) {
            continue;
        }
        if *group == 0 {
            out.insert(vec![value.clone()]);
        } else {
            groups
                .entry((code.clone(), *group))
                .or_default()
                .push(value.clone());
        }
    }
    out.extend(groups.into_values().map(|mut g| {
        g.sort();
        g
    }));
    out
}

/// The parameters of `rt` whose values, searched through other parameters' rows in what the
/// store writes for `resource` ([`extract`]), differ from what their own expressions yield
/// ([`extract_unshared`]): empty when every shared parameter stands for exactly its values.
pub fn stands_for(rt: ResourceType, resource: &Value) -> Vec<String> {
    let stored = flat(&extract(rt, resource));
    let own = flat(&extract_unshared(rt, resource));
    let mut wrong = Vec::new();
    let mut params: Vec<_> = SearchParams::r4()
        .of(rt)
        .filter(|p| p.stored != Stored::Own)
        .collect();
    params.sort_by(|a, b| a.code.cmp(&b.code));
    for param in params {
        for suffix in ["", ":text", ":of-type", ":identifier"] {
            let mine = values_of(&own, &[format!("{}{suffix}", param.code)], None);
            let (codes, target) = param.row_codes(suffix);
            if mine != values_of(&stored, &codes, target) {
                wrong.push(format!("{}{suffix}", param.code));
            }
        }
    }
    wrong
}
