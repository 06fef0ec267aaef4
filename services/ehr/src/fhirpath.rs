//! FHIRPath for FHIR R4: the expressions of the specification's invariants and search
//! parameters, evaluated over FHIR JSON with the types of the R4 definitions.
//!
//! ```text
//! let expr = Expression::parse("Patient.name.where(use = 'official').family")?;
//! let values = expr.evaluate_on(&patient_json)?;
//! ```

mod eval;
mod model;
mod parse;

use serde_json::Value;

pub use eval::{Env, EvalError};
pub(crate) use model::element_at;
pub use model::{Item, Node, Ty};
pub use parse::SyntaxError;

/// A compiled FHIRPath expression.
#[derive(Debug, Clone)]
pub struct Expression {
    text: String,
    expr: parse::Expr,
}

impl Expression {
    pub fn parse(text: &str) -> Result<Expression, SyntaxError> {
        Ok(Expression {
            text: text.to_string(),
            expr: parse::parse(text)?,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The expression as evaluated on a resource of type `rt`: branches of a top-level union
    /// that start from another resource type (`CarePlan.subject | Observation.subject`) can
    /// never yield anything there and are dropped. `None` when no branch is left.
    pub fn for_resource_type(&self, rt: &str) -> Option<Expression> {
        use parse::{BinaryOp, Expr};
        fn branches(e: &Expr, out: &mut Vec<Expr>) {
            match e {
                Expr::Binary(BinaryOp::Union, l, r) => {
                    branches(l, out);
                    branches(r, out);
                }
                other => out.push(other.clone()),
            }
        }
        fn root(e: &Expr) -> Option<&str> {
            match e {
                Expr::Member(None, name) => Some(name),
                Expr::Member(Some(r), _)
                | Expr::Function(Some(r), _)
                | Expr::Indexer(r, _)
                | Expr::Is(r, _)
                | Expr::As(r, _) => root(r),
                _ => None,
            }
        }
        let defs = crate::definitions::Definitions::r4();
        let mut all = Vec::new();
        branches(&self.expr, &mut all);
        let kept: Vec<Expr> = all
            .into_iter()
            .filter(|b| root(b).is_none_or(|name| name == rt || defs.resource_type(name).is_none()))
            .collect();
        let was_union = matches!(self.expr, Expr::Binary(BinaryOp::Union, _, _));
        let mut expr = kept
            .into_iter()
            .reduce(|l, r| Expr::Binary(BinaryOp::Union, Box::new(l), Box::new(r)))?;
        // A union removes duplicates; one branch left of it still must.
        if was_union && !matches!(expr, Expr::Binary(BinaryOp::Union, _, _)) {
            expr = Expr::Binary(BinaryOp::Union, Box::new(expr), Box::new(Expr::Empty));
        }
        Some(Expression {
            text: self.text.clone(),
            expr,
        })
    }

    /// Evaluates on a whole resource: it is the input, `%resource` and `%context`.
    pub fn evaluate_on<'a>(&self, resource: &'a Value) -> Result<Vec<Item<'a>>, EvalError> {
        let node = Item::Node(model::resource(resource));
        let env = Env {
            resource: Some(node.clone()),
            root_resource: None,
            context: Some(node.clone()),
        };
        eval::evaluate(&self.expr, &[node], &env)
    }

    /// Evaluates with `input` as the initial collection and the given environment.
    pub fn evaluate<'a>(
        &self,
        input: &[Item<'a>],
        env: &Env<'a>,
    ) -> Result<Vec<Item<'a>>, EvalError> {
        eval::evaluate(&self.expr, input, env)
    }
}

/// A resource as a FHIRPath node.
pub fn resource_node(resource: &Value) -> Item<'_> {
    Item::Node(model::resource(resource))
}

/// A value of a known FHIR type (a datatype such as `Period`, or a resource) as a node.
pub fn typed_node<'a>(value: &'a Value, type_name: &str) -> Item<'a> {
    Item::Node(model::typed(value, type_name))
}

/// Where `target` (a value inside `root`, found by identity) is, as a FHIRPath below the root:
/// `.address[0].line[1]`; empty for the root itself.
pub fn location(root: &Value, target: &Value) -> Option<String> {
    if std::ptr::eq(root, target) {
        return Some(String::new());
    }
    match root {
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let key = k.strip_prefix('_').unwrap_or(k);
            match v {
                Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
                    location(item, target).map(|rest| format!(".{key}[{i}]{rest}"))
                }),
                _ => location(v, target).map(|rest| format!(".{key}{rest}")),
            }
        }),
        _ => None,
    }
}

/// Whether the result of an invariant counts as satisfied: anything but a single `false`.
pub fn satisfied(result: &[Item<'_>]) -> bool {
    !matches!(result, [Item::Boolean(false)])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn eval(expr: &str, resource: &Value) -> Vec<String> {
        Expression::parse(expr)
            .unwrap()
            .evaluate_on(resource)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
            .iter()
            .map(|i| match i {
                Item::Node(n) => match n.value {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => "<no value>".into(),
                },
                Item::Boolean(b) => b.to_string(),
                Item::Integer(i) => i.to_string(),
                Item::Decimal(d) => d.to_string(),
                Item::String(s) | Item::Date(s) | Item::DateTime(s) | Item::Time(s) => {
                    s.to_string()
                }
                Item::Quantity(v, u) => format!("{v} {u}"),
                Item::Reference(t) => format!("ref:{t}"),
            })
            .collect()
    }

    fn patient() -> Value {
        json!({
            "resourceType": "Patient",
            "id": "p1",
            "birthDate": "1980-05-01",
            "_birthDate": {"extension": [{"url": "http://example.org/time", "valueTime": "10:30:00"}]},
            "name": [
                {"use": "official", "family": "Nguyễn", "given": ["Văn", "An"]},
                {"use": "nickname", "given": ["Ân"]}
            ],
            "deceasedBoolean": false,
            "managingOrganization": {"reference": "Organization/o1"},
            "generalPractitioner": [{"reference": "#pr"}],
            "contained": [{"resourceType": "Practitioner", "id": "pr"}],
            "contact": [{"name": {"family": "Trần"}}]
        })
    }

    #[test]
    fn navigation_choice_types_and_primitive_extensions() {
        let p = patient();
        assert_eq!(eval("Patient.name.given", &p), ["Văn", "An", "Ân"]);
        assert_eq!(eval("name.where(use = 'official').family", &p), ["Nguyễn"]);
        assert_eq!(eval("deceased", &p), ["false"]);
        assert_eq!(eval("deceased is boolean", &p), ["true"]);
        assert_eq!(eval("Patient.deceased.ofType(boolean)", &p), ["false"]);
        assert_eq!(eval("deceased.ofType(dateTime)", &p), Vec::<String>::new());
        assert_eq!(
            eval("birthDate.extension('http://example.org/time').value", &p),
            ["10:30:00"]
        );
        assert_eq!(eval("contact.name.family", &p), ["Trần"]);
        assert_eq!(eval("name.given.count()", &p), ["3"]);
        assert_eq!(eval("name[1].given.first()", &p), ["Ân"]);
        assert_eq!(eval("Observation.status", &p), Vec::<String>::new());
    }

    #[test]
    fn logic_comparison_and_dates_follow_the_specification() {
        let p = patient();
        assert_eq!(eval("birthDate < @2000-01-01", &p), ["true"]);
        assert_eq!(eval("birthDate > @1980", &p), Vec::<String>::new());
        assert_eq!(eval("birthDate = @1980-05-01", &p), ["true"]);
        assert_eq!(
            eval("@2020-01-01T10:00:00+07:00 = @2020-01-01T03:00:00Z", &p),
            ["true"]
        );
        assert_eq!(eval("{} and true", &p), Vec::<String>::new());
        assert_eq!(eval("{} and false", &p), ["false"]);
        assert_eq!(eval("{} or true", &p), ["true"]);
        assert_eq!(eval("false implies {}", &p), ["true"]);
        assert_eq!(eval("true xor false", &p), ["true"]);
        assert_eq!(eval("(1 | 2 | 2).count()", &p), ["2"]);
        assert_eq!(eval("'official' in name.use", &p), ["true"]);
        assert_eq!(eval("name.use contains 'temp'", &p), ["false"]);
        assert_eq!(eval("7 div 2 + 7 mod 2", &p), ["4"]);
        assert_eq!(eval("'a' & {} & 'b'", &p), ["ab"]);
        assert_eq!(eval("'ABC'.matches('B')", &p), ["true"]);
        assert_eq!(eval("'Hello'.substring(1, 3)", &p), ["ell"]);
        assert_eq!(eval("'a b' ~ 'A  B'", &p), ["true"]);
        assert_eq!(eval("2 'mg' < 3 'mg'", &p), ["true"]);
        assert_eq!(eval("iif(name.exists(), 'yes', 'no')", &p), ["yes"]);
    }

    #[test]
    fn resolve_finds_contained_resources_and_types_references() {
        let p = patient();
        assert_eq!(eval("generalPractitioner.resolve().id", &p), ["pr"]);
        assert_eq!(
            eval(
                "managingOrganization.where(resolve() is Organization).reference",
                &p
            ),
            ["Organization/o1"]
        );
        assert_eq!(
            eval("managingOrganization.where(resolve() is Patient)", &p),
            Vec::<String>::new()
        );
        assert_eq!(eval("contained.ofType(Practitioner).id", &p), ["pr"]);
        assert_eq!(
            eval("descendants().where($this is HumanName).count()", &p),
            ["3"]
        );
    }

    #[test]
    fn a_collection_where_one_item_is_needed_is_an_error() {
        let p = patient();
        let e = Expression::parse("name.given.length() > 2").unwrap();
        assert!(e.evaluate_on(&p).is_err());
    }
}
