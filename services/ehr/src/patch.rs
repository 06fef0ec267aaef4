//! JSON Patch (RFC 6902) applied to stored resource text.
//!
//! The resource is taken apart into a tree whose numbers stay the text the client wrote, so a
//! patch changes only what it names: `9000.00` elsewhere in the resource stays `9000.00`.
//! Errors say which operation failed and why; nothing is written unless every operation
//! applies.

mod fhirpath_patch;

use serde_json::value::RawValue;

use crate::{json, resource::RawObject};

/// A patch document, by its media type.
#[derive(Debug, Clone)]
pub enum Document {
    /// `application/json-patch+json`
    JsonPatch(String),
    /// A `Parameters` resource (`application/fhir+json`).
    FhirPath(String),
}

impl Document {
    /// Applies the document to `resource`; answers the new resource text.
    pub fn apply(&self, resource: &str) -> Result<String, PatchError> {
        match self {
            Document::JsonPatch(patch) => apply(resource, patch),
            Document::FhirPath(patch) => fhirpath_patch::apply(resource, patch),
        }
    }
}

/// A JSON value whose numbers keep their original text.
#[derive(Debug, Clone)]
pub enum Node {
    Null,
    Bool(bool),
    Number(String),
    Str(String),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl PartialEq for Node {
    /// RFC 6902 `test` equality: numbers compare by value, objects regardless of order.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Node::Null, Node::Null) => true,
            (Node::Bool(a), Node::Bool(b)) => a == b,
            (Node::Number(a), Node::Number(b)) => {
                a == b || a.parse::<f64>().ok() == b.parse::<f64>().ok()
            }
            (Node::Str(a), Node::Str(b)) => a == b,
            (Node::Array(a), Node::Array(b)) => a == b,
            (Node::Object(a), Node::Object(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .all(|(k, v)| b.iter().any(|(k2, v2)| k == k2 && v == v2))
            }
            _ => false,
        }
    }
}

impl Node {
    /// Builds the tree from JSON text (already known to be valid JSON).
    pub fn parse(text: &str) -> Result<Node, String> {
        let raw: Box<RawValue> =
            serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        Self::from_raw(&raw)
    }

    fn from_raw(raw: &RawValue) -> Result<Node, String> {
        let text = raw.get().trim();
        let bad = |e: serde_json::Error| e.to_string();
        Ok(match text.as_bytes().first() {
            Some(b'{') => {
                let object: RawObject = serde_json::from_str(text).map_err(bad)?;
                let mut fields = Vec::new();
                for key in object.keys() {
                    let value = object.get(key).expect("key from keys()");
                    fields.push((key.to_string(), Self::from_raw(value)?));
                }
                Node::Object(fields)
            }
            Some(b'[') => {
                let items: Vec<Box<RawValue>> = serde_json::from_str(text).map_err(bad)?;
                Node::Array(
                    items
                        .iter()
                        .map(|i| Self::from_raw(i))
                        .collect::<Result<_, _>>()?,
                )
            }
            Some(b'"') => Node::Str(serde_json::from_str(text).map_err(bad)?),
            Some(b't') => Node::Bool(true),
            Some(b'f') => Node::Bool(false),
            Some(b'n') => Node::Null,
            _ => Node::Number(text.to_string()),
        })
    }

    pub fn to_json(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Node::Null => out.push_str("null"),
            Node::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Node::Number(n) => out.push_str(n),
            Node::Str(s) => out.push_str(&json::string(s)),
            Node::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Node::Object(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&json::string(k));
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }

    fn child_mut(&mut self, token: &str) -> Option<&mut Node> {
        match self {
            Node::Object(fields) => fields.iter_mut().find(|(k, _)| k == token).map(|(_, v)| v),
            Node::Array(items) => array_index(token, items.len()).and_then(|i| items.get_mut(i)),
            _ => None,
        }
    }

    fn get(&self, pointer: &[String]) -> Option<&Node> {
        let mut node = self;
        for token in pointer {
            node = match node {
                Node::Object(fields) => fields.iter().find(|(k, _)| k == token).map(|(_, v)| v)?,
                Node::Array(items) => items.get(array_index(token, items.len())?)?,
                _ => return None,
            };
        }
        Some(node)
    }

    fn get_mut(&mut self, pointer: &[String]) -> Option<&mut Node> {
        let mut node = self;
        for token in pointer {
            node = node.child_mut(token)?;
        }
        Some(node)
    }
}

/// An array index token: digits without leading zeros, within `len`.
fn array_index(token: &str, len: usize) -> Option<usize> {
    if token.is_empty()
        || (token.len() > 1 && token.starts_with('0'))
        || !token.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    token.parse::<usize>().ok().filter(|i| *i < len)
}

/// Splits a JSON Pointer (RFC 6901) into unescaped tokens.
fn pointer(text: &str) -> Result<Vec<String>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let rest = text
        .strip_prefix('/')
        .ok_or_else(|| format!("path {text:?} must start with '/'"))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

/// One operation of a patch document.
#[derive(Debug, Clone)]
enum Op {
    Add(Vec<String>, Node),
    Remove(Vec<String>),
    Replace(Vec<String>, Node),
    Move(Vec<String>, Vec<String>),
    Copy(Vec<String>, Vec<String>),
    Test(Vec<String>, Node),
}

/// Why a patch could not be applied.
#[derive(Debug, PartialEq, Eq)]
pub enum PatchError {
    /// The patch document itself is malformed (400).
    Malformed(String),
    /// An operation does not apply to this resource (422).
    Failed(String),
}

fn parse_ops(patch: &str) -> Result<Vec<Op>, PatchError> {
    let malformed = |m: String| PatchError::Malformed(m);
    let Node::Array(items) = Node::parse(patch).map_err(malformed)? else {
        return Err(PatchError::Malformed(
            "a JSON Patch document is an array of operations".into(),
        ));
    };
    let mut ops = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let Node::Object(fields) = item else {
            return Err(malformed(format!("operation {i} is not an object")));
        };
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let text = |name: &str| -> Result<Vec<String>, PatchError> {
            match field(name) {
                Some(Node::Str(s)) => {
                    pointer(&s).map_err(|m| malformed(format!("operation {i}: {m}")))
                }
                _ => Err(malformed(format!("operation {i} needs a string {name:?}"))),
            }
        };
        let value =
            || field("value").ok_or_else(|| malformed(format!("operation {i} needs a \"value\"")));
        let op = match field("op") {
            Some(Node::Str(op)) => op,
            _ => return Err(malformed(format!("operation {i} needs a string \"op\""))),
        };
        ops.push(match op.as_str() {
            "add" => Op::Add(text("path")?, value()?),
            "remove" => Op::Remove(text("path")?),
            "replace" => Op::Replace(text("path")?, value()?),
            "move" => Op::Move(text("from")?, text("path")?),
            "copy" => Op::Copy(text("from")?, text("path")?),
            "test" => Op::Test(text("path")?, value()?),
            other => {
                return Err(malformed(format!(
                    "operation {i}: unknown op {:?}",
                    other.chars().take(20).collect::<String>()
                )));
            }
        });
    }
    Ok(ops)
}

fn show(path: &[String]) -> String {
    path.iter()
        .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
        .collect()
}

fn add(doc: &mut Node, path: &[String], value: Node) -> Result<(), String> {
    let Some((last, parent)) = path.split_last() else {
        *doc = value;
        return Ok(());
    };
    match doc.get_mut(parent) {
        Some(Node::Object(fields)) => {
            match fields.iter_mut().find(|(k, _)| k == last) {
                Some((_, v)) => *v = value,
                None => fields.push((last.clone(), value)),
            }
            Ok(())
        }
        Some(Node::Array(items)) => {
            let index = if last == "-" {
                items.len()
            } else {
                array_index(last, items.len() + 1).ok_or("the array index is out of range")?
            };
            items.insert(index, value);
            Ok(())
        }
        Some(_) => Err("the parent is not an object or array".into()),
        None => Err("the parent does not exist".into()),
    }
}

fn remove(doc: &mut Node, path: &[String]) -> Result<Node, String> {
    let (last, parent) = path
        .split_last()
        .ok_or("the whole resource cannot be removed")?;
    match doc.get_mut(parent) {
        Some(Node::Object(fields)) => {
            let position = fields
                .iter()
                .position(|(k, _)| k == last)
                .ok_or("the path does not exist")?;
            Ok(fields.remove(position).1)
        }
        Some(Node::Array(items)) => {
            let index = array_index(last, items.len()).ok_or("the path does not exist")?;
            Ok(items.remove(index))
        }
        _ => Err("the path does not exist".into()),
    }
}

/// Applies `patch` (a JSON Patch document) to `resource`; answers the new resource text.
pub fn apply(resource: &str, patch: &str) -> Result<String, PatchError> {
    let ops = parse_ops(patch)?;
    let mut doc = Node::parse(resource).map_err(PatchError::Failed)?;
    for (i, op) in ops.into_iter().enumerate() {
        let (name, path, result) = match op {
            Op::Add(path, value) => ("add", show(&path), add(&mut doc, &path, value)),
            Op::Remove(path) => ("remove", show(&path), remove(&mut doc, &path).map(drop)),
            Op::Replace(path, value) => {
                let result = match doc.get_mut(&path) {
                    Some(target) => {
                        *target = value;
                        Ok(())
                    }
                    None => Err("the path does not exist".to_string()),
                };
                ("replace", show(&path), result)
            }
            Op::Move(from, path) => {
                let result = if path.starts_with(&from) && path.len() > from.len() {
                    Err("a value cannot be moved into itself".to_string())
                } else {
                    remove(&mut doc, &from).and_then(|value| add(&mut doc, &path, value))
                };
                ("move", show(&path), result)
            }
            Op::Copy(from, path) => {
                let result = match doc.get(&from).cloned() {
                    Some(value) => add(&mut doc, &path, value),
                    None => Err(format!("from {} does not exist", show(&from))),
                };
                ("copy", show(&path), result)
            }
            Op::Test(path, value) => {
                let result = match doc.get(&path) {
                    Some(actual) if *actual == value => Ok(()),
                    Some(_) => Err("the value differs from the test's".to_string()),
                    None => Err("the path does not exist".to_string()),
                };
                ("test", show(&path), result)
            }
        };
        result
            .map_err(|why| PatchError::Failed(format!("operation {i} ({name} {path}): {why}")))?;
    }
    Ok(doc.to_json())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OBS: &str = r#"{"resourceType":"Observation","id":"o","status":"preliminary","valueQuantity":{"value":9000.00,"unit":"g"},"note":[{"text":"a"},{"text":"b"}],"a/b":{"~":1}}"#;

    #[test]
    fn operations_change_only_what_they_name() {
        let patch = r#"[
            {"op":"replace","path":"/status","value":"final"},
            {"op":"add","path":"/note/1","value":{"text":"between"}},
            {"op":"add","path":"/note/-","value":{"text":"last"}},
            {"op":"remove","path":"/note/0"},
            {"op":"copy","from":"/valueQuantity/unit","path":"/code"},
            {"op":"move","from":"/a~1b/~0","path":"/moved"},
            {"op":"test","path":"/valueQuantity/value","value":9000}
        ]"#;
        let out = apply(OBS, patch).unwrap();
        assert_eq!(
            out,
            r#"{"resourceType":"Observation","id":"o","status":"final","valueQuantity":{"value":9000.00,"unit":"g"},"note":[{"text":"between"},{"text":"b"},{"text":"last"}],"a/b":{},"code":"g","moved":1}"#
        );
    }

    #[test]
    fn failures_name_the_operation_and_the_reason() {
        let fails = |patch: &str| match apply(OBS, patch) {
            Err(PatchError::Failed(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(
            fails(r#"[{"op":"replace","path":"/nothing","value":1}]"#)
                .contains("operation 0 (replace /nothing): the path does not exist")
        );
        assert!(fails(r#"[{"op":"remove","path":"/note/2"}]"#).contains("does not exist"));
        assert!(fails(r#"[{"op":"add","path":"/note/3","value":1}]"#).contains("out of range"));
        assert!(
            fails(r#"[{"op":"add","path":"/x/y","value":1}]"#).contains("parent does not exist")
        );
        assert!(fails(r#"[{"op":"test","path":"/status","value":"final"}]"#).contains("differs"));
        assert!(
            fails(r#"[{"op":"move","from":"/note","path":"/note/0"}]"#).contains("into itself")
        );
        assert!(fails(r#"[{"op":"remove","path":"/note/01"}]"#).contains("does not exist"));
    }

    #[test]
    fn malformed_documents_are_refused_before_anything_applies() {
        for patch in [
            "{}",
            "[1]",
            r#"[{"path":"/a"}]"#,
            r#"[{"op":"add","path":"/a"}]"#,
            r#"[{"op":"jump","path":"/a"}]"#,
            r#"[{"op":"add","path":"a","value":1}]"#,
            "not json",
        ] {
            assert!(
                matches!(apply(OBS, patch), Err(PatchError::Malformed(_))),
                "{patch}"
            );
        }
    }
}
