//! Evaluation of a FHIRPath syntax tree over FHIR JSON.
//!
//! Collections are `Vec<Item>`; elements of the input are borrowed, computed values owned.
//! Three-valued logic, empty propagation and singleton evaluation follow the specification.
//! What the engine cannot decide without outside help (terminology, other resources) yields
//! empty, never a guess: `memberOf`, `conformsTo`, and `resolve()` of references outside the
//! resource (which gives only the target's type).

use std::{borrow::Cow, cmp::Ordering};

use serde_json::Value;

use super::{
    model::{Item, Node, item_is, system_value},
    parse::{BinaryOp, Expr, Function, Literal, TypeName},
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("FHIRPath evaluation error: {0}")]
pub struct EvalError(pub String);

fn fail<T>(message: impl Into<String>) -> Result<T, EvalError> {
    Err(EvalError(message.into()))
}

/// The environment: `%resource`, `%rootResource`, `%context`.
#[derive(Debug, Clone, Default)]
pub struct Env<'a> {
    pub resource: Option<Item<'a>>,
    pub root_resource: Option<Item<'a>>,
    pub context: Option<Item<'a>>,
}

/// `$this`, `$index` and `$total` inside a function's argument.
#[derive(Clone, Copy)]
struct Frame<'f, 'a> {
    env: &'f Env<'a>,
    this: Option<&'f Item<'a>>,
    index: usize,
    total: Option<&'f [Item<'a>]>,
}

type Items<'a> = Vec<Item<'a>>;

/// Evaluates `expr` with `input` as the initial collection.
pub fn evaluate<'a>(
    expr: &Expr,
    input: &[Item<'a>],
    env: &Env<'a>,
) -> Result<Items<'a>, EvalError> {
    let frame = Frame {
        env,
        this: None,
        index: 0,
        total: None,
    };
    eval(expr, input, frame)
}

fn eval<'a>(expr: &Expr, input: &[Item<'a>], f: Frame<'_, 'a>) -> Result<Items<'a>, EvalError> {
    Ok(match expr {
        Expr::Empty => Vec::new(),
        Expr::Literal(l) => vec![literal(l)],
        Expr::This => f.this.cloned().into_iter().collect(),
        Expr::Index => vec![Item::Integer(f.index as i64)],
        Expr::Total => f.total.map(<[_]>::to_vec).unwrap_or_default(),
        Expr::Variable(name) => match name.as_str() {
            "resource" => f.env.resource.clone().into_iter().collect(),
            "rootResource" => f
                .env
                .root_resource
                .clone()
                .or_else(|| f.env.resource.clone())
                .into_iter()
                .collect(),
            "context" => f.env.context.clone().into_iter().collect(),
            "ucum" => vec![Item::String(Cow::Borrowed("http://unitsofmeasure.org"))],
            "sct" => vec![Item::String(Cow::Borrowed("http://snomed.info/sct"))],
            "loinc" => vec![Item::String(Cow::Borrowed("http://loinc.org"))],
            other => return fail(format!("unknown variable %{other}")),
        },
        Expr::Member(receiver, name) => {
            let base = match receiver {
                Some(r) => eval(r, input, f)?,
                None => {
                    // `Patient.name` on a Patient: a leading type name selects the input.
                    if name.starts_with(|c: char| c.is_ascii_uppercase())
                        && input.iter().any(|i| item_is(i, None, name))
                    {
                        return Ok(input
                            .iter()
                            .filter(|i| item_is(i, None, name))
                            .cloned()
                            .collect());
                    }
                    input.to_vec()
                }
            };
            let mut out = Vec::new();
            for item in &base {
                if let Item::Node(node) = item {
                    node.member(name, &mut out);
                }
            }
            out
        }
        Expr::Function(receiver, function) => {
            let base = match receiver {
                Some(r) => eval(r, input, f)?,
                None => input.to_vec(),
            };
            call(function, base, f)?
        }
        Expr::Indexer(base, index) => {
            let base = eval(base, input, f)?;
            let index = eval(index, input, f)?;
            match singleton(&index)? {
                None => Vec::new(),
                Some(Item::Integer(i)) if *i >= 0 => {
                    base.into_iter().nth(*i as usize).into_iter().collect()
                }
                Some(_) => fail("an index must be a non-negative integer")?,
            }
        }
        Expr::Negate(inner) => match singleton_value(&eval(inner, input, f)?)? {
            None => Vec::new(),
            Some(Item::Integer(i)) => vec![Item::Integer(-i)],
            Some(Item::Decimal(d)) => vec![Item::Decimal(-d)],
            Some(Item::Quantity(v, u)) => vec![Item::Quantity(-v, u)],
            Some(_) => fail("only numbers and quantities can be negated")?,
        },
        Expr::Is(inner, ty) => {
            let items = eval(inner, input, f)?;
            match items.as_slice() {
                [] => Vec::new(),
                [item] => vec![Item::Boolean(is_type(item, ty))],
                _ => fail("'is' needs a single item")?,
            }
        }
        Expr::As(inner, ty) => eval(inner, input, f)?
            .into_iter()
            .filter(|i| is_type(i, ty))
            .collect(),
        Expr::Binary(op, left, right) => binary(*op, left, right, input, f)?,
    })
}

fn literal(l: &Literal) -> Item<'static> {
    match l {
        Literal::Boolean(b) => Item::Boolean(*b),
        Literal::String(s) => Item::String(Cow::Owned(s.clone())),
        Literal::Integer(i) => Item::Integer(*i),
        Literal::Decimal(d) => Item::Decimal(*d),
        Literal::Date(s) => Item::Date(Cow::Owned(s.clone())),
        Literal::DateTime(s) => Item::DateTime(Cow::Owned(s.clone())),
        Literal::Time(s) => Item::Time(Cow::Owned(s.clone())),
        Literal::Quantity(v, u) => Item::Quantity(*v, Cow::Owned(u.clone())),
    }
}

fn is_type(item: &Item<'_>, ty: &TypeName) -> bool {
    item_is(item, ty.namespace.as_deref(), &ty.name)
}

/// The type named by a function argument: `ofType(Patient)`, `as(FHIR.Quantity)`.
fn type_argument(arg: Option<&Expr>) -> Result<TypeName, EvalError> {
    match arg {
        Some(Expr::Member(None, name)) => Ok(TypeName {
            namespace: None,
            name: name.clone(),
        }),
        Some(Expr::Member(Some(ns), name)) => match ns.as_ref() {
            Expr::Member(None, ns) => Ok(TypeName {
                namespace: Some(ns.clone()),
                name: name.clone(),
            }),
            _ => fail("expected a type name"),
        },
        _ => fail("expected a type name"),
    }
}

/// At most one item, else an error.
fn singleton<'i, 'a>(items: &'i [Item<'a>]) -> Result<Option<&'i Item<'a>>, EvalError> {
    match items {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => fail(format!(
            "expected a single item, found a collection of {}",
            items.len()
        )),
    }
}

/// At most one item, as a system value (primitive nodes converted).
fn singleton_value<'a>(items: &[Item<'a>]) -> Result<Option<Item<'a>>, EvalError> {
    Ok(singleton(items)?.and_then(value_of))
}

fn value_of<'a>(item: &Item<'a>) -> Option<Item<'a>> {
    match item {
        Item::Node(node) => system_value(node),
        other => Some(other.clone()),
    }
}

/// A collection in a boolean context: empty → unknown, one boolean → itself, any other single
/// item → true.
fn truth(items: &[Item<'_>]) -> Result<Option<bool>, EvalError> {
    match singleton(items)? {
        None => Ok(None),
        Some(item) => Ok(Some(match value_of(item) {
            Some(Item::Boolean(b)) => b,
            _ => true,
        })),
    }
}

fn boolean<'a>(b: Option<bool>) -> Items<'a> {
    b.map(Item::Boolean).into_iter().collect()
}

fn string_of(item: &Item<'_>) -> Option<String> {
    Some(match value_of(item)? {
        Item::String(s) | Item::Date(s) | Item::DateTime(s) | Item::Time(s) => s.into_owned(),
        Item::Boolean(b) => b.to_string(),
        Item::Integer(i) => i.to_string(),
        Item::Decimal(d) => match item {
            // Keep the decimal as written in the resource.
            Item::Node(Node {
                value: Some(Value::Number(n)),
                ..
            }) => n.to_string(),
            _ => d.to_string(),
        },
        Item::Quantity(v, u) => format!("{v} '{u}'"),
        Item::Node(_) | Item::Reference(_) => return None,
    })
}

fn binary<'a>(
    op: BinaryOp,
    left: &Expr,
    right: &Expr,
    input: &[Item<'a>],
    f: Frame<'_, 'a>,
) -> Result<Items<'a>, EvalError> {
    use BinaryOp::*;
    // Boolean operators short-circuit where the specification allows.
    match op {
        And => {
            let l = truth(&eval(left, input, f)?)?;
            if l == Some(false) {
                return Ok(boolean(Some(false)));
            }
            let r = truth(&eval(right, input, f)?)?;
            return Ok(boolean(match (l, r) {
                (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            }));
        }
        Or => {
            let l = truth(&eval(left, input, f)?)?;
            if l == Some(true) {
                return Ok(boolean(Some(true)));
            }
            let r = truth(&eval(right, input, f)?)?;
            return Ok(boolean(match (l, r) {
                (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            }));
        }
        Implies => {
            let l = truth(&eval(left, input, f)?)?;
            if l == Some(false) {
                return Ok(boolean(Some(true)));
            }
            let r = truth(&eval(right, input, f)?)?;
            return Ok(boolean(match (l, r) {
                (_, Some(true)) => Some(true),
                (Some(true), Some(false)) => Some(false),
                _ => None,
            }));
        }
        Xor => {
            let l = truth(&eval(left, input, f)?)?;
            let r = truth(&eval(right, input, f)?)?;
            return Ok(boolean(l.zip(r).map(|(a, b)| a != b)));
        }
        _ => {}
    }
    let l = eval(left, input, f)?;
    let r = eval(right, input, f)?;
    Ok(match op {
        Union => union(l, r),
        Equal | NotEqual => {
            let eq = collection_equal(&l, &r, equal);
            boolean(if op == Equal { eq } else { eq.map(|b| !b) })
        }
        Equivalent | NotEquivalent => {
            let eq = collection_equal(&l, &r, |a, b| Some(equivalent(a, b)))
                .unwrap_or(l.is_empty() && r.is_empty());
            boolean(Some(if op == Equivalent { eq } else { !eq }))
        }
        Less | Greater | LessOrEqual | GreaterOrEqual => {
            let (Some(a), Some(b)) = (singleton_value(&l)?, singleton_value(&r)?) else {
                return Ok(Vec::new());
            };
            boolean(compare(&a, &b)?.map(|o| match op {
                Less => o == Ordering::Less,
                Greater => o == Ordering::Greater,
                LessOrEqual => o != Ordering::Greater,
                _ => o != Ordering::Less,
            }))
        }
        In | Contains => {
            let (needle, haystack) = if op == In { (&l, &r) } else { (&r, &l) };
            match singleton(needle)? {
                None => Vec::new(),
                Some(n) => boolean(Some(haystack.iter().any(|h| equal(n, h) == Some(true)))),
            }
        }
        Concatenate => {
            let a = singleton(&l)?.and_then(string_of).unwrap_or_default();
            let b = singleton(&r)?.and_then(string_of).unwrap_or_default();
            vec![Item::String(Cow::Owned(a + &b))]
        }
        Add | Subtract | Multiply | Divide | Div | Mod => {
            let (Some(a), Some(b)) = (singleton_value(&l)?, singleton_value(&r)?) else {
                return Ok(Vec::new());
            };
            arithmetic(op, a, b)?.into_iter().collect()
        }
        And | Or | Xor | Implies => unreachable!("handled above"),
    })
}

fn arithmetic<'a>(op: BinaryOp, a: Item<'a>, b: Item<'a>) -> Result<Option<Item<'a>>, EvalError> {
    use BinaryOp::*;
    Ok(Some(match (a, b) {
        (Item::Integer(x), Item::Integer(y)) => match op {
            Add => Item::Integer(
                x.checked_add(y)
                    .ok_or_else(|| EvalError("overflow".into()))?,
            ),
            Subtract => Item::Integer(
                x.checked_sub(y)
                    .ok_or_else(|| EvalError("overflow".into()))?,
            ),
            Multiply => Item::Integer(
                x.checked_mul(y)
                    .ok_or_else(|| EvalError("overflow".into()))?,
            ),
            Divide if y != 0 => Item::Decimal(x as f64 / y as f64),
            Div if y != 0 => Item::Integer(x / y),
            Mod if y != 0 => Item::Integer(x % y),
            _ => return Ok(None),
        },
        (Item::String(x), Item::String(y)) if op == Add => {
            Item::String(Cow::Owned(x.into_owned() + &y))
        }
        (a, b) => {
            let (Some(x), Some(y)) = (number(&a), number(&b)) else {
                return fail("arithmetic needs numbers");
            };
            match op {
                Add => Item::Decimal(x + y),
                Subtract => Item::Decimal(x - y),
                Multiply => Item::Decimal(x * y),
                Divide if y != 0.0 => Item::Decimal(x / y),
                Div if y != 0.0 => Item::Integer((x / y).trunc() as i64),
                Mod if y != 0.0 => Item::Decimal(x % y),
                _ => return Ok(None),
            }
        }
    }))
}

fn number(item: &Item<'_>) -> Option<f64> {
    match item {
        Item::Integer(i) => Some(*i as f64),
        Item::Decimal(d) => Some(*d),
        _ => None,
    }
}

fn union<'a>(l: Items<'a>, r: Items<'a>) -> Items<'a> {
    let mut out: Items<'a> = Vec::with_capacity(l.len() + r.len());
    for item in l.into_iter().chain(r) {
        if !out.iter().any(|o| equal(o, &item) == Some(true)) {
            out.push(item);
        }
    }
    out
}

/// `=` over collections: empty if either is empty; false if the sizes differ; else pairwise.
fn collection_equal(
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
fn same_json(a: &Value, b: &Value) -> bool {
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

fn equivalent(a: &Item<'_>, b: &Item<'_>) -> bool {
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
fn compare(a: &Item<'_>, b: &Item<'_>) -> Result<Option<Ordering>, EvalError> {
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
struct Moment {
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

    /// Minutes since 0000-03-01 in UTC (days from the civil calendar), for date-times that
    /// carry at least minutes.
    fn utc_minutes(&self) -> i64 {
        let [y, m, d, h, min, _] = self.parts;
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe;
        days * 1440 + h * 60 + min - self.offset.unwrap_or(0)
    }
}

fn compare_moments(a: &Moment, b: &Moment) -> Option<Ordering> {
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

/// Evaluates a function argument once per input item, with `$this` bound.
fn each<'a>(
    arg: &Expr,
    items: &[Item<'a>],
    f: Frame<'_, 'a>,
) -> impl Iterator<Item = Result<Items<'a>, EvalError>> {
    items.iter().enumerate().map(move |(index, item)| {
        let frame = Frame {
            env: f.env,
            this: Some(item),
            index,
            total: f.total,
        };
        eval(arg, std::slice::from_ref(item), frame)
    })
}

/// Evaluates an argument that does not depend on the item (`startsWith('#')`), against the
/// input of the whole expression's context (`$this`).
fn argument<'a>(arg: Option<&Expr>, f: Frame<'_, 'a>) -> Result<Items<'a>, EvalError> {
    match arg {
        None => fail("missing argument"),
        Some(arg) => {
            let input: Vec<Item<'a>> = f
                .this
                .cloned()
                .or_else(|| f.env.context.clone())
                .into_iter()
                .collect();
            eval(arg, &input, f)
        }
    }
}

fn string_argument(arg: Option<&Expr>, f: Frame<'_, '_>) -> Result<Option<String>, EvalError> {
    Ok(singleton(&argument(arg, f)?)?.and_then(string_of))
}

fn integer_argument(arg: Option<&Expr>, f: Frame<'_, '_>) -> Result<Option<i64>, EvalError> {
    match singleton_value(&argument(arg, f)?)? {
        None => Ok(None),
        Some(Item::Integer(i)) => Ok(Some(i)),
        Some(_) => fail("expected an integer"),
    }
}

fn call<'a>(func: &Function, input: Items<'a>, f: Frame<'_, 'a>) -> Result<Items<'a>, EvalError> {
    let arg = |i: usize| func.args.get(i);
    let input_string =
        || -> Result<Option<String>, EvalError> { Ok(singleton(&input)?.and_then(string_of)) };
    Ok(match func.name.as_str() {
        // Existence
        "empty" => boolean(Some(input.is_empty())),
        "exists" => match arg(0) {
            None => boolean(Some(!input.is_empty())),
            Some(criteria) => {
                let mut found = false;
                for r in each(criteria, &input, f) {
                    if truth(&r?)? == Some(true) {
                        found = true;
                        break;
                    }
                }
                boolean(Some(found))
            }
        },
        "all" => {
            let criteria = arg(0).ok_or_else(|| EvalError("all() needs criteria".into()))?;
            let mut all = true;
            for r in each(criteria, &input, f) {
                if truth(&r?)? != Some(true) {
                    all = false;
                    break;
                }
            }
            boolean(Some(all))
        }
        "allTrue" | "anyTrue" | "allFalse" | "anyFalse" => {
            let want = matches!(func.name.as_str(), "allTrue" | "anyTrue");
            let mut values = Vec::new();
            for item in &input {
                match value_of(item) {
                    Some(Item::Boolean(b)) => values.push(b == want),
                    _ => return fail(format!("{}() needs booleans", func.name)),
                }
            }
            let any = func.name.starts_with("any");
            boolean(Some(if any {
                values.iter().any(|v| *v)
            } else {
                values.iter().all(|v| *v)
            }))
        }
        "count" => vec![Item::Integer(input.len() as i64)],
        "hasValue" => boolean(Some(matches!(
            input.as_slice(),
            [Item::Node(n)] if n.ty.is_primitive() && n.value.is_some()
        ))),
        "distinct" => union(input, Vec::new()),
        "isDistinct" => {
            let n = input.len();
            boolean(Some(union(input, Vec::new()).len() == n))
        }
        "subsetOf" | "supersetOf" => {
            let other = argument(arg(0), f)?;
            let (small, big) = if func.name == "subsetOf" {
                (&input, &other)
            } else {
                (&other, &input)
            };
            boolean(Some(
                small
                    .iter()
                    .all(|s| big.iter().any(|b| equal(s, b) == Some(true))),
            ))
        }
        // Filtering and projection
        "where" => {
            let criteria = arg(0).ok_or_else(|| EvalError("where() needs criteria".into()))?;
            let mut out = Vec::new();
            for (item, r) in input.iter().zip(each(criteria, &input, f)) {
                if truth(&r?)? == Some(true) {
                    out.push(item.clone());
                }
            }
            out
        }
        "select" => {
            let projection =
                arg(0).ok_or_else(|| EvalError("select() needs a projection".into()))?;
            let mut out = Vec::new();
            for r in each(projection, &input, f) {
                out.extend(r?);
            }
            out
        }
        "repeat" => {
            let projection =
                arg(0).ok_or_else(|| EvalError("repeat() needs a projection".into()))?;
            let mut out: Items<'a> = Vec::new();
            let mut queue = input;
            while !queue.is_empty() {
                let mut next = Vec::new();
                for r in each(projection, &queue, f) {
                    for item in r? {
                        if !out.iter().any(|o| equal(o, &item) == Some(true)) {
                            out.push(item.clone());
                            next.push(item);
                        }
                    }
                }
                queue = next;
            }
            out
        }
        "ofType" => {
            let ty = type_argument(arg(0))?;
            input.into_iter().filter(|i| is_type(i, &ty)).collect()
        }
        "as" => {
            let ty = type_argument(arg(0))?;
            input.into_iter().filter(|i| is_type(i, &ty)).collect()
        }
        "is" => {
            let ty = type_argument(arg(0))?;
            match singleton(&input)? {
                None => Vec::new(),
                Some(item) => boolean(Some(is_type(item, &ty))),
            }
        }
        // Subsetting
        "single" => singleton(&input)?.cloned().into_iter().collect(),
        "first" => input.into_iter().take(1).collect(),
        "last" => input.into_iter().last().into_iter().collect(),
        "tail" => input.into_iter().skip(1).collect(),
        "skip" => match integer_argument(arg(0), f)? {
            Some(n) => input.into_iter().skip(n.max(0) as usize).collect(),
            None => Vec::new(),
        },
        "take" => match integer_argument(arg(0), f)? {
            Some(n) => input.into_iter().take(n.max(0) as usize).collect(),
            None => Vec::new(),
        },
        "intersect" => {
            let other = argument(arg(0), f)?;
            let both: Items<'a> = input
                .into_iter()
                .filter(|i| other.iter().any(|o| equal(i, o) == Some(true)))
                .collect();
            union(both, Vec::new())
        }
        "exclude" => {
            let other = argument(arg(0), f)?;
            input
                .into_iter()
                .filter(|i| !other.iter().any(|o| equal(i, o) == Some(true)))
                .collect()
        }
        "union" => union(input, argument(arg(0), f)?),
        "combine" => {
            let mut all = input;
            all.extend(argument(arg(0), f)?);
            all
        }
        // Navigation
        "children" => {
            let mut out = Vec::new();
            for item in &input {
                if let Item::Node(node) = item {
                    node.children(&mut out);
                }
            }
            out
        }
        "descendants" => {
            let mut out = Vec::new();
            let mut queue = input;
            while !queue.is_empty() {
                let mut next = Vec::new();
                for item in &queue {
                    if let Item::Node(node) = item {
                        node.children(&mut next);
                    }
                }
                out.extend(next.iter().cloned());
                queue = next;
            }
            out
        }
        "extension" => {
            let url = string_argument(arg(0), f)?;
            let mut exts = Vec::new();
            for item in &input {
                if let Item::Node(node) = item {
                    node.member("extension", &mut exts);
                }
            }
            exts.into_iter()
                .filter(|e| match e {
                    Item::Node(n) => {
                        n.value.and_then(|v| v.get("url")).and_then(Value::as_str) == url.as_deref()
                    }
                    _ => false,
                })
                .collect()
        }
        "resolve" => input.iter().filter_map(|i| resolve(i, f.env)).collect(),
        // Logic and utility
        "not" => boolean(truth(&input)?.map(|b| !b)),
        "iif" => {
            let criterion = {
                let frame = Frame {
                    this: input.first().or(f.this),
                    ..f
                };
                truth(&eval(
                    arg(0).ok_or_else(|| EvalError("iif() needs a criterion".into()))?,
                    &input,
                    frame,
                )?)?
            };
            let branch = if criterion == Some(true) {
                arg(1)
            } else {
                arg(2)
            };
            match branch {
                Some(e) => eval(e, &input, f)?,
                None => Vec::new(),
            }
        }
        "trace" => input,
        "today" => vec![Item::Date(Cow::Owned(today()))],
        "now" => vec![Item::DateTime(Cow::Owned(now()))],
        // Terminology and profiles need services outside the evaluated resource.
        "memberOf" | "conformsTo" | "subsumes" | "subsumedBy" => Vec::new(),
        "htmlChecks" => boolean(Some(input.iter().all(html_checks))),
        // Strings
        "startsWith" | "endsWith" | "contains" => {
            let (Some(s), Some(p)) = (input_string()?, string_argument(arg(0), f)?) else {
                return Ok(Vec::new());
            };
            boolean(Some(match func.name.as_str() {
                "startsWith" => s.starts_with(&p),
                "endsWith" => s.ends_with(&p),
                _ => s.contains(&p),
            }))
        }
        "matches" => {
            let Some(s) = input_string()? else {
                return Ok(Vec::new());
            };
            let re = match &func.regex {
                Some(re) => re.clone(),
                None => match string_argument(arg(0), f)? {
                    None => return Ok(Vec::new()),
                    Some(p) => regex::Regex::new(&format!("(?s){p}"))
                        .map_err(|e| EvalError(format!("bad regular expression: {e}")))?,
                },
            };
            boolean(Some(re.is_match(&s)))
        }
        "replaceMatches" => {
            let (Some(s), Some(with)) = (input_string()?, string_argument(arg(1), f)?) else {
                return Ok(Vec::new());
            };
            let Some(re) = &func.regex else {
                return fail("replaceMatches() needs a literal pattern");
            };
            vec![Item::String(Cow::Owned(
                re.replace_all(&s, with.as_str()).into_owned(),
            ))]
        }
        "replace" => {
            let (Some(s), Some(p), Some(with)) = (
                input_string()?,
                string_argument(arg(0), f)?,
                string_argument(arg(1), f)?,
            ) else {
                return Ok(Vec::new());
            };
            vec![Item::String(Cow::Owned(s.replace(&p, &with)))]
        }
        "indexOf" => {
            let (Some(s), Some(p)) = (input_string()?, string_argument(arg(0), f)?) else {
                return Ok(Vec::new());
            };
            let i = s.find(&p).map_or(-1, |b| s[..b].chars().count() as i64);
            vec![Item::Integer(i)]
        }
        "substring" => {
            let Some(s) = input_string()? else {
                return Ok(Vec::new());
            };
            let Some(start) = integer_argument(arg(0), f)? else {
                return Ok(Vec::new());
            };
            let chars: Vec<char> = s.chars().collect();
            if start < 0 || start as usize >= chars.len() {
                return Ok(Vec::new());
            }
            let len = match arg(1) {
                Some(_) => integer_argument(arg(1), f)?.unwrap_or(0).max(0) as usize,
                None => chars.len(),
            };
            let end = (start as usize).saturating_add(len).min(chars.len());
            vec![Item::String(Cow::Owned(
                chars[start as usize..end].iter().collect(),
            ))]
        }
        "length" => match input_string()? {
            Some(s) => vec![Item::Integer(s.chars().count() as i64)],
            None => Vec::new(),
        },
        "upper" | "lower" => match input_string()? {
            Some(s) => vec![Item::String(Cow::Owned(if func.name == "upper" {
                s.to_uppercase()
            } else {
                s.to_lowercase()
            }))],
            None => Vec::new(),
        },
        "toChars" => match input_string()? {
            Some(s) => s
                .chars()
                .map(|c| Item::String(Cow::Owned(c.to_string())))
                .collect(),
            None => Vec::new(),
        },
        // Conversions
        "toString" => input_string()?
            .map(|s| Item::String(Cow::Owned(s)))
            .into_iter()
            .collect(),
        "toInteger" => match singleton_value(&input)? {
            Some(Item::Integer(i)) => vec![Item::Integer(i)],
            Some(Item::Boolean(b)) => vec![Item::Integer(b as i64)],
            Some(Item::String(s)) => s.parse().ok().map(Item::Integer).into_iter().collect(),
            _ => Vec::new(),
        },
        "toDecimal" => match singleton_value(&input)? {
            Some(Item::Integer(i)) => vec![Item::Decimal(i as f64)],
            Some(Item::Decimal(d)) => vec![Item::Decimal(d)],
            Some(Item::String(s)) => s.parse().ok().map(Item::Decimal).into_iter().collect(),
            _ => Vec::new(),
        },
        "toBoolean" => match singleton_value(&input)? {
            Some(Item::Boolean(b)) => vec![Item::Boolean(b)],
            Some(Item::String(s)) => match s.to_lowercase().as_str() {
                "true" | "t" | "yes" | "y" | "1" | "1.0" => vec![Item::Boolean(true)],
                "false" | "f" | "no" | "n" | "0" | "0.0" => vec![Item::Boolean(false)],
                _ => Vec::new(),
            },
            _ => Vec::new(),
        },
        "abs" => match singleton_value(&input)? {
            Some(Item::Integer(i)) => vec![Item::Integer(i.abs())],
            Some(Item::Decimal(d)) => vec![Item::Decimal(d.abs())],
            Some(Item::Quantity(v, u)) => vec![Item::Quantity(v.abs(), u)],
            _ => Vec::new(),
        },
        other => return fail(format!("unsupported function {other}()")),
    })
}

/// `resolve()`: a contained resource (`#id`), the resource itself, or for any other reference
/// the type named in it.
fn resolve<'a>(item: &Item<'a>, env: &Env<'a>) -> Option<Item<'a>> {
    let reference = match item {
        Item::Node(n) if n.ty.is_primitive() => n.value?.as_str()?,
        Item::Node(n) => n.value?.get("reference")?.as_str()?,
        Item::String(s) => return resolve_text(s, env),
        _ => return None,
    };
    resolve_text(reference, env)
}

fn resolve_text<'a>(reference: &str, env: &Env<'a>) -> Option<Item<'a>> {
    if let Some(id) = reference.strip_prefix('#') {
        let Some(Item::Node(root)) = env.root_resource.as_ref().or(env.resource.as_ref()) else {
            return None;
        };
        let contained = root.value?.get("contained")?.as_array()?;
        return contained
            .iter()
            .find(|c| c.get("id").and_then(Value::as_str) == Some(id))
            .map(|c| Item::Node(super::model::resource(c)));
    }
    let path = reference.split(['?', '#']).next()?;
    let segments: Vec<&str> = path.split('/').collect();
    // Type/id or …/Type/id/_history/n
    let at = match segments.iter().rposition(|s| *s == "_history") {
        Some(h) if h >= 2 => h - 2,
        _ => segments.len().checked_sub(2)?,
    };
    let rt = segments.get(at)?;
    crate::definitions::Definitions::r4()
        .resource_type(rt)
        .map(|t| Item::Reference(t.as_str().to_string()))
}

/// txt-1: the narrative is XHTML in a `div`, without scripts, forms, frames or event handlers.
fn html_checks(item: &Item<'_>) -> bool {
    let Some(s) = item_string(item) else {
        return false;
    };
    let lower = s.to_ascii_lowercase();
    let trimmed = lower.trim_start();
    if !trimmed.starts_with("<div") || !lower.contains("http://www.w3.org/1999/xhtml") {
        return false;
    }
    const BANNED: [&str; 8] = [
        "<script", "<form", "<iframe", "<object", "<applet", "<embed", "<frame", "<base",
    ];
    if BANNED.iter().any(|b| lower.contains(b)) {
        return false;
    }
    // Event handler attributes (`onclick=`) inside a tag.
    let bytes = lower.as_bytes();
    let mut in_tag = false;
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'<' => in_tag = true,
            b'>' => in_tag = false,
            b'o' if in_tag
                && i > 0
                && bytes[i - 1].is_ascii_whitespace()
                && bytes.get(i + 1) == Some(&b'n') =>
            {
                let name: String = lower[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphabetic())
                    .collect();
                let rest = lower[i + name.len()..].trim_start();
                if name.len() > 2 && rest.starts_with('=') {
                    return false;
                }
            }
            _ => {}
        }
    }
    true
}

fn item_string(item: &Item<'_>) -> Option<String> {
    match item {
        Item::Node(Node {
            value: Some(Value::String(s)),
            ..
        }) => Some(s.clone()),
        Item::String(s) => Some(s.to_string()),
        _ => None,
    }
}

fn now() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn today() -> String {
    now().chars().take(10).collect()
}
