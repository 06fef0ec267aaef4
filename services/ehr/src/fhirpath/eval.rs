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

mod compare;
mod functions;

use compare::*;
use functions::*;

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
