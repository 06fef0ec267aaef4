//! Keyset pages for sorted searches: a `next` link carries the sort values and id of the last
//! resource of its page, and the next page starts strictly after that position. Unlike an
//! offset, the position does not move when resources are created or deleted before it, so a
//! client paging through a sorted search while others write sees no resource twice and skips
//! none that stayed in place. (Unsorted searches page by id alone: `AfterId`.)
//!
//! The token is opaque to clients: base64url of a small JSON array, checked against the
//! search's sort keys when it comes back, so a token from another search is refused.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::Value;

use super::query::Bind;

/// What a sort key's values are in SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKind {
    Text,
    Int,
    Float,
}

/// One sort value of a resource (`Null`: the resource has no value for the key).
#[derive(Debug, Clone, PartialEq)]
pub enum SortValue {
    Null,
    Text(String),
    Int(i64),
    Float(f64),
}

/// A sort key as SQL: the expression over the resource row, its direction and value kind.
#[derive(Debug, Clone)]
pub struct SortColumn {
    pub expression: String,
    pub descending: bool,
    pub kind: SortKind,
}

/// Where a sorted page starts: after the resource with these sort values and this id.
#[derive(Debug, Clone, PartialEq)]
pub struct Position {
    pub values: Vec<SortValue>,
    pub id: String,
}

impl Position {
    /// The opaque token of a `next` link.
    pub fn token(&self) -> String {
        let mut items: Vec<Value> = self
            .values
            .iter()
            .map(|v| match v {
                SortValue::Null => Value::Null,
                SortValue::Text(t) => Value::from(t.as_str()),
                SortValue::Int(i) => Value::from(*i),
                SortValue::Float(f) => serde_json::Number::from_f64(*f)
                    .map_or(Value::Null, |n| Value::Array(vec![Value::Number(n)])),
            })
            .collect();
        items.push(Value::from(self.id.as_str()));
        URL_SAFE_NO_PAD.encode(Value::Array(items).to_string())
    }

    /// The position a token names, if it is one of ours for sort keys of these `kinds`.
    pub fn from_token(token: &str, kinds: &[SortKind]) -> Option<Position> {
        let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
        let Value::Array(mut items) = serde_json::from_slice(&bytes).ok()? else {
            return None;
        };
        if items.len() != kinds.len() + 1 {
            return None;
        }
        let id = match items.pop()? {
            Value::String(id) => id,
            _ => return None,
        };
        let values = items
            .into_iter()
            .zip(kinds)
            .map(|(item, kind)| match (item, kind) {
                (Value::Null, _) => Some(SortValue::Null),
                (Value::String(t), SortKind::Text) => Some(SortValue::Text(t)),
                (Value::Number(n), SortKind::Int) => n.as_i64().map(SortValue::Int),
                // Floats travel in a one-element array so that 2.0 stays a float.
                (Value::Array(a), SortKind::Float) => match a.as_slice() {
                    [Value::Number(n)] => n.as_f64().map(SortValue::Float),
                    _ => None,
                },
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Position { values, id })
    }

    /// The SQL condition "sorts after this position" over the row alias `row`, whose sort
    /// values are the columns `s0, s1, …` and whose id is `id`, with the same order as
    /// [`order_terms`]: each key ascending or descending, resources without a value last.
    pub fn after_sql(&self, row: &str, columns: &[SortColumn], binds: &mut Vec<Bind>) -> String {
        let mut alternatives = Vec::new();
        let mut equal: Vec<String> = Vec::new();
        for (i, (value, column)) in self.values.iter().zip(columns).enumerate() {
            let key = format!("{row}.s{i}");
            let bound = match value {
                SortValue::Null => None,
                SortValue::Text(t) => Some(Bind::Text(t.clone())),
                SortValue::Int(n) => Some(Bind::Int(*n)),
                SortValue::Float(f) => Some(Bind::Float(*f)),
            };
            match bound {
                // Nothing sorts after a missing value at this key but other missing values
                // (compared on the keys that follow).
                None => equal.push(format!("{key} IS NULL")),
                Some(bound) => {
                    binds.push(bound);
                    let placeholder = format!("${}", binds.len());
                    let beyond = if column.descending { "<" } else { ">" };
                    let mut after = equal.clone();
                    after.push(format!("({key} IS NULL OR {key} {beyond} {placeholder})"));
                    alternatives.push(after.join(" AND "));
                    equal.push(format!("{key} = {placeholder}"));
                }
            }
        }
        binds.push(Bind::Text(self.id.clone()));
        equal.push(format!("{row}.id > ${}", binds.len()));
        alternatives.push(equal.join(" AND "));
        format!("(({}))", alternatives.join(") OR ("))
    }
}

/// The ORDER BY terms of a sorted page over the row alias `row`: each key in its direction
/// with missing values last, then the id.
pub fn order_terms(row: &str, columns: &[SortColumn]) -> String {
    let mut order: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, column)| {
            format!(
                "CASE WHEN {row}.s{i} IS NULL THEN 1 ELSE 0 END, {row}.s{i}{}",
                if column.descending { " DESC" } else { "" }
            )
        })
        .collect();
    order.push(format!("{row}.id"));
    order.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_the_same_position_when_it_comes_back() {
        let kinds = [
            SortKind::Text,
            SortKind::Int,
            SortKind::Float,
            SortKind::Float,
        ];
        let position = Position {
            values: vec![
                SortValue::Text("nguyễn \"a\"".into()),
                SortValue::Int(-1_700_000_000_000_000),
                SortValue::Float(2.0),
                SortValue::Null,
            ],
            id: "obs-1".into(),
        };
        let token = position.token();
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(Position::from_token(&token, &kinds), Some(position));
    }

    #[test]
    fn a_token_for_other_sort_keys_or_garbage_is_refused() {
        let token = Position {
            values: vec![SortValue::Int(5)],
            id: "a".into(),
        }
        .token();
        assert_eq!(Position::from_token(&token, &[SortKind::Text]), None);
        assert_eq!(Position::from_token(&token, &[]), None);
        assert_eq!(
            Position::from_token(&token, &[SortKind::Int, SortKind::Int]),
            None
        );
        assert_eq!(Position::from_token("not a token", &[SortKind::Int]), None);
        assert_eq!(Position::from_token("", &[]), None);
    }

    #[test]
    fn after_a_missing_value_only_missing_values_follow() {
        let columns = [SortColumn {
            expression: "x".into(),
            descending: true,
            kind: SortKind::Int,
        }];
        let mut binds = Vec::new();
        let sql = Position {
            values: vec![SortValue::Null],
            id: "b".into(),
        }
        .after_sql("m", &columns, &mut binds);
        assert_eq!(sql, "((m.s0 IS NULL AND m.id > $1))");
        let mut binds = Vec::new();
        let sql = Position {
            values: vec![SortValue::Int(7)],
            id: "b".into(),
        }
        .after_sql("m", &columns, &mut binds);
        assert_eq!(
            sql,
            "(((m.s0 IS NULL OR m.s0 < $1)) OR (m.s0 = $1 AND m.id > $2))"
        );
        assert_eq!(binds, [Bind::Int(7), Bind::Text("b".into())]);
    }
}
