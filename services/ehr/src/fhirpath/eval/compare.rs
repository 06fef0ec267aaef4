//! Equality, equivalence and ordering of FHIRPath values (dates and times at their
//! precision), and the numbers and unions they rest on.

use super::*;

pub(super) fn number(item: &Item<'_>) -> Option<f64> {
    match item {
        Item::Integer(i) => Some(*i as f64),
        Item::Decimal(d) => Some(*d),
        _ => None,
    }
}

pub(super) fn union<'a>(l: Items<'a>, r: Items<'a>) -> Items<'a> {
    let mut out: Items<'a> = Vec::with_capacity(l.len() + r.len());
    for item in l.into_iter().chain(r) {
        if !out.iter().any(|o| equal(o, &item) == Some(true)) {
            out.push(item);
        }
    }
    out
}

/// `=` over collections: empty if either is empty; false if the sizes differ; else pairwise.
pub(super) fn collection_equal(
    l: &[Item<'_>],
    r: &[Item<'_>],
    eq: impl Fn(&Item<'_>, &Item<'_>) -> Option<bool>,
) -> Option<bool> {
    if l.is_empty() || r.is_empty() {
        return None;
    }
    if l.len() != r.len() {
        return Some(false);
    }
    let mut result = Some(true);
    for (a, b) in l.iter().zip(r) {
        match eq(a, b) {
            Some(false) => return Some(false),
            None => result = None,
            Some(true) => {}
        }
    }
    result
}

/// Equality of two items; `None` when it cannot be decided (dates of different precision).
pub(crate) fn equal(a: &Item<'_>, b: &Item<'_>) -> Option<bool> {
    if let (Item::Node(x), Item::Node(y)) = (a, b)
        && !x.ty.is_primitive()
        && !y.ty.is_primitive()
    {
        return Some(match (x.value, y.value) {
            (Some(v), Some(w)) => same_json(v, w),
            (v, w) => v == w,
        });
    }
    let (Some(a), Some(b)) = (value_of(a), value_of(b)) else {
        return Some(false);
    };
    match (&a, &b) {
        (Item::Boolean(x), Item::Boolean(y)) => Some(x == y),
        (Item::String(x), Item::String(y)) => Some(x == y),
        (Item::Reference(x), Item::Reference(y)) => Some(x == y),
        (Item::Quantity(v, u), Item::Quantity(w, t)) => Some(v == w && u == t),
        (Item::Date(_) | Item::DateTime(_), Item::Date(_) | Item::DateTime(_))
        | (Item::Time(_), Item::Time(_)) => compare(&a, &b).ok().flatten().map(|o| o.is_eq()),
        _ => match (number(&a), number(&b)) {
            (Some(x), Some(y)) => Some(x == y),
            _ => Some(false),
        },
    }
}

/// Member-wise equality of complex values: numbers by value (`1` = `1.0`), the rest exactly.
pub(super) fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same_json(v, w))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

pub(super) fn equivalent(a: &Item<'_>, b: &Item<'_>) -> bool {
    let (Some(x), Some(y)) = (value_of(a), value_of(b)) else {
        return equal(a, b) == Some(true);
    };
    match (&x, &y) {
        (Item::String(s), Item::String(t)) => {
            let norm = |s: &str| {
                s.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase()
            };
            norm(s) == norm(t)
        }
        _ => equal(&x, &y) == Some(true),
    }
}

/// Ordering of two system values; `Ok(None)` when precision makes it undecidable.
pub(super) fn compare(a: &Item<'_>, b: &Item<'_>) -> Result<Option<Ordering>, EvalError> {
    Ok(match (a, b) {
        (Item::String(x), Item::String(y)) => Some(x.cmp(y)),
        (Item::Date(x) | Item::DateTime(x), Item::Date(y) | Item::DateTime(y)) => {
            compare_moments(&Moment::parse(x), &Moment::parse(y))
        }
        (Item::Time(x), Item::Time(y)) => {
            compare_moments(&Moment::parse_time(x), &Moment::parse_time(y))
        }
        (Item::Quantity(v, u), Item::Quantity(w, t)) => {
            if u != t {
                return Ok(None);
            }
            v.partial_cmp(w)
        }
        _ => match (number(a), number(b)) {
            (Some(x), Some(y)) => x.partial_cmp(&y),
            _ => return fail("these values cannot be compared"),
        },
    })
}

/// A date, date-time or time split into its parts, as precise as it was written.
#[derive(Debug)]
pub(super) struct Moment {
    /// year, month, day, hour, minute, millisecond-of-minute.
    parts: [i64; 6],
    precision: usize,
    /// Offset from UTC in minutes, when given.
    offset: Option<i64>,
}

impl Moment {
    fn parse(s: &str) -> Moment {
        let (date, time) = s.split_once('T').unwrap_or((s, ""));
        let mut parts = [0i64, 1, 1, 0, 0, 0];
        let mut precision = 0;
        for (i, p) in date.split('-').take(3).enumerate() {
            if let Ok(n) = p.parse() {
                parts[i] = n;
                precision = i + 1;
            }
        }
        let mut m = Moment {
            parts,
            precision,
            offset: None,
        };
        if !time.is_empty() {
            m.time(time, 3);
        }
        m
    }

    fn parse_time(s: &str) -> Moment {
        let mut m = Moment {
            parts: [0, 1, 1, 0, 0, 0],
            precision: 3,
            offset: None,
        };
        m.time(s, 3);
        m
    }

    fn time(&mut self, time: &str, from: usize) {
        let (clock, offset) = match time.find(['Z', '+', '-']) {
            Some(i) => (&time[..i], Some(&time[i..])),
            None => (time, None),
        };
        self.offset = offset.map(|o| {
            if o == "Z" {
                return 0;
            }
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let (h, m) = o[1..].split_once(':').unwrap_or((&o[1..], "0"));
            sign * (h.parse::<i64>().unwrap_or(0) * 60 + m.parse::<i64>().unwrap_or(0))
        });
        for (i, p) in clock.split(':').take(3).enumerate() {
            let value = if i == 2 {
                p.parse::<f64>().ok().map(|s| (s * 1000.0).round() as i64)
            } else {
                p.parse().ok()
            };
            if let Some(v) = value {
                self.parts[from + i] = v;
                self.precision = from + i + 1;
            }
        }
    }

    /// Minutes since 1970-01-01 in UTC, for date-times that carry at least minutes.
    fn utc_minutes(&self) -> i64 {
        let [y, m, d, h, min, _] = self.parts;
        crate::search::dates::days_from_civil(y, m, d) * 1440 + h * 60 + min
            - self.offset.unwrap_or(0)
    }
}

pub(super) fn compare_moments(a: &Moment, b: &Moment) -> Option<Ordering> {
    if a.precision >= 5 && b.precision >= 5 && (a.offset.is_some() || b.offset.is_some()) {
        let by_minute = a.utc_minutes().cmp(&b.utc_minutes());
        if by_minute.is_ne() {
            return Some(by_minute);
        }
        if a.precision != b.precision {
            return None;
        }
        return Some(a.parts[5].cmp(&b.parts[5]));
    }
    let shared = a.precision.min(b.precision);
    for i in 0..shared {
        let o = a.parts[i].cmp(&b.parts[i]);
        if o.is_ne() {
            return Some(o);
        }
    }
    (a.precision == b.precision).then_some(Ordering::Equal)
}
