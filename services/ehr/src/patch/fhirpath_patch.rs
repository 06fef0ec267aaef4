//! FHIRPath Patch (FHIR R4 §3.1.0.5): a `Parameters` resource whose `operation` parameters
//! add, insert, delete, replace and move elements located by FHIRPath expressions.
//!
//! Each operation's path is evaluated on the resource as it stands after the operations before
//! it; the elements found are located in the number-preserving tree by identity, so only what
//! an operation names changes. Values come from `value[x]`, or from nested `part`s for
//! elements without a type of their own (backbone elements).

use serde_json::Value;

use super::{Node, PatchError};
use crate::{
    fhirpath::{Expression, Item},
    validation::{Element, Validator, is_choice_suffix},
};

/// One operation of a FHIRPath Patch.
struct Operation {
    kind: Kind,
    path: Expression,
    name: Option<String>,
    /// The value, and the type suffix of its `value[x]` key (`Quantity`), if typed.
    value: Option<(Node, Option<String>)>,
    index: Option<usize>,
    source: Option<usize>,
    destination: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Add,
    Insert,
    Delete,
    Replace,
    Move,
}

fn fields(node: &Node) -> &[(String, Node)] {
    match node {
        Node::Object(f) => f,
        _ => &[],
    }
}

fn field<'n>(node: &'n Node, name: &str) -> Option<&'n Node> {
    fields(node).iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn parts(node: &Node) -> &[Node] {
    match field(node, "part") {
        Some(Node::Array(items)) => items,
        _ => &[],
    }
}

/// A parameter's `value[x]`: the value and its type suffix.
fn typed_value(part: &Node) -> Option<(Node, String)> {
    fields(part).iter().find_map(|(k, v)| {
        let suffix = k.strip_prefix("value")?;
        suffix
            .starts_with(|c: char| c.is_ascii_uppercase())
            .then(|| (v.clone(), suffix.to_string()))
    })
}

/// The value of a `value` part: `value[x]`, or an object built from its nested parts.
fn part_value(part: &Node, at: &str) -> Result<(Node, Option<String>), PatchError> {
    if let Some((value, suffix)) = typed_value(part) {
        return Ok((value, Some(suffix)));
    }
    let nested = parts(part);
    if nested.is_empty() {
        return Err(PatchError::Malformed(format!(
            "{at}: a value needs value[x] or parts"
        )));
    }
    let mut object: Vec<(String, Node)> = Vec::new();
    for p in nested {
        let Some(Node::Str(name)) = field(p, "name") else {
            return Err(PatchError::Malformed(format!("{at}: a part needs a name")));
        };
        let (value, suffix) = part_value(p, at)?;
        // A choice element given by its stem takes the value's type: `value` + `Quantity`.
        let key = name.clone();
        let key = match suffix {
            Some(s) if name.ends_with("[x]") => format!("{}{s}", name.trim_end_matches("[x]")),
            _ => key,
        };
        match object.iter_mut().find(|(k, _)| *k == key) {
            Some((_, Node::Array(items))) => items.push(value),
            Some((_, existing)) => {
                let first = std::mem::replace(existing, Node::Null);
                *existing = Node::Array(vec![first, value]);
            }
            None => object.push((key, value)),
        }
    }
    Ok((Node::Object(object), None))
}

fn parse(document: &str) -> Result<Vec<Operation>, PatchError> {
    let malformed = |m: String| PatchError::Malformed(m);
    let doc = Node::parse(document).map_err(malformed)?;
    if field(&doc, "resourceType") != Some(&Node::Str("Parameters".into())) {
        return Err(malformed(
            "a FHIRPath Patch is a Parameters resource".into(),
        ));
    }
    let params = match field(&doc, "parameter") {
        Some(Node::Array(items)) if !items.is_empty() => items.as_slice(),
        _ => return Err(malformed("the patch has no operations".into())),
    };
    let mut ops = Vec::new();
    for (i, param) in params.iter().enumerate() {
        let at = format!("operation {i}");
        if field(param, "name") != Some(&Node::Str("operation".into())) {
            return Err(malformed(format!(
                "{at}: every parameter is named \"operation\""
            )));
        }
        let part = |name: &str| {
            parts(param)
                .iter()
                .find(|p| field(p, "name") == Some(&Node::Str(name.into())))
        };
        let text = |name: &str| -> Result<Option<String>, PatchError> {
            match part(name).map(typed_value) {
                None => Ok(None),
                Some(Some((Node::Str(s), _))) => Ok(Some(s)),
                Some(_) => Err(malformed(format!("{at}: {name} must be a string value"))),
            }
        };
        let number = |name: &str| -> Result<Option<usize>, PatchError> {
            match part(name).map(typed_value) {
                None => Ok(None),
                Some(Some((Node::Number(n), _))) => n
                    .parse()
                    .map(Some)
                    .map_err(|_| malformed(format!("{at}: {name} must be a non-negative integer"))),
                Some(_) => Err(malformed(format!("{at}: {name} must be an integer value"))),
            }
        };
        let kind = match text("type")?.as_deref() {
            Some("add") => Kind::Add,
            Some("insert") => Kind::Insert,
            Some("delete") => Kind::Delete,
            Some("replace") => Kind::Replace,
            Some("move") => Kind::Move,
            Some(other) => {
                return Err(malformed(format!(
                    "{at}: unknown type {:?}",
                    other.chars().take(20).collect::<String>()
                )));
            }
            None => return Err(malformed(format!("{at} needs a type"))),
        };
        let path_text = text("path")?.ok_or_else(|| malformed(format!("{at} needs a path")))?;
        let path =
            Expression::parse(&path_text).map_err(|e| malformed(format!("{at}: path: {e}")))?;
        let value = match part("value") {
            Some(p) => Some(part_value(p, &at)?),
            None => None,
        };
        let op = Operation {
            kind,
            path,
            name: text("name")?,
            value,
            index: number("index")?,
            source: number("source")?,
            destination: number("destination")?,
        };
        let missing = |what: &str| Err(malformed(format!("{at}: a {kind:?} needs {what}")));
        match kind {
            Kind::Add if op.name.is_none() || op.value.is_none() => {
                return missing("a name and a value");
            }
            Kind::Insert if op.index.is_none() || op.value.is_none() => {
                return missing("an index and a value");
            }
            Kind::Replace if op.value.is_none() => return missing("a value"),
            Kind::Move if op.source.is_none() || op.destination.is_none() => {
                return missing("a source and a destination");
            }
            _ => {}
        }
        ops.push(op);
    }
    Ok(ops)
}

/// The JSON Pointer tokens of `target` inside `root`, found by identity.
fn locate(root: &Value, target: &Value) -> Option<Vec<String>> {
    if std::ptr::eq(root, target) {
        return Some(Vec::new());
    }
    let found = match root {
        Value::Object(map) => map
            .iter()
            .find_map(|(k, v)| locate(v, target).map(|p| (k.clone(), p))),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| locate(v, target).map(|p| (i.to_string(), p))),
        _ => None,
    };
    found.map(|(first, mut rest)| {
        rest.insert(0, first);
        rest
    })
}

/// Where the elements an expression selects live: pointers into the resource, and the
/// matching type information for the one container of an `add`.
struct Selection {
    pointers: Vec<Vec<String>>,
    /// The definition of each selected element, when the definitions know it.
    elements: Vec<Option<&'static Element>>,
    container_type: Option<crate::fhirpath::Ty>,
}

fn select(path: &Expression, doc: &Node) -> Result<Selection, String> {
    let value: Value = serde_json::from_str(&doc.to_json()).map_err(|e| e.to_string())?;
    let items = path.evaluate_on(&value).map_err(|e| e.to_string())?;
    let mut pointers = Vec::new();
    let mut elements = Vec::new();
    let mut container_type = None;
    for item in &items {
        let Item::Node(node) = item else {
            return Err("the path selects a computed value, not an element".into());
        };
        let Some(v) = node.value else {
            return Err("the path selects an element without a value".into());
        };
        let pointer = locate(&value, v).ok_or("the element cannot be located")?;
        elements.push(crate::fhirpath::element_at(&value, &pointer));
        pointers.push(pointer);
        container_type = Some(node.ty);
    }
    Ok(Selection {
        pointers,
        elements,
        container_type,
    })
}

/// The single element a path must select.
fn one(selection: &Selection) -> Result<&[String], String> {
    match selection.pointers.as_slice() {
        [one] => Ok(one),
        [] => Err("the path matches nothing".into()),
        _ => Err(format!(
            "the path matches {} elements; one is needed",
            selection.pointers.len()
        )),
    }
}

/// The parent pointer and the array index of an element of a list.
fn list_item(pointer: &[String]) -> Option<(&[String], usize)> {
    let (last, parent) = pointer.split_last()?;
    Some((parent, last.parse().ok()?))
}

fn apply_one(doc: &mut Node, op: &Operation) -> Result<(), String> {
    let selection = select(&op.path, doc)?;
    match op.kind {
        Kind::Add => {
            let target = one(&selection)?.to_vec();
            let (value, suffix) = op.value.clone().expect("checked when parsed");
            let name = op.name.as_deref().expect("checked when parsed");
            let element = selection.container_type.and_then(|ty| {
                Validator::r4()
                    .elements(ty.table, ty.path)
                    .iter()
                    .find(|e| e.name == name)
            });
            let (key, many) = match element {
                Some(e) if e.choice => {
                    let suffix = suffix.ok_or("a choice element needs a typed value")?;
                    if !e.types.iter().any(|t| is_choice_suffix(t, &suffix)) {
                        return Err(format!("{name} cannot hold a {suffix}"));
                    }
                    (format!("{name}{suffix}"), e.many)
                }
                Some(e) => (name.to_string(), e.many),
                None => (name.to_string(), false),
            };
            let Some(Node::Object(fields)) = doc.get_mut(&target) else {
                return Err("the path does not select an element with children".into());
            };
            match fields.iter_mut().find(|(k, _)| *k == key) {
                Some((_, Node::Array(items))) if many => items.push(value),
                Some(_) => return Err(format!("{key} already has a value; use replace")),
                None if many => fields.push((key, Node::Array(vec![value]))),
                None => fields.push((key, value)),
            }
            Ok(())
        }
        Kind::Insert | Kind::Move => {
            let first = selection
                .pointers
                .first()
                .ok_or("the path matches no list")?;
            let (parent, _) = list_item(first).ok_or("the path does not select a list")?;
            let parent = parent.to_vec();
            if selection
                .pointers
                .iter()
                .any(|p| list_item(p).map(|(q, _)| q) != Some(parent.as_slice()))
            {
                return Err("the path selects elements of more than one list".into());
            }
            let Some(Node::Array(items)) = doc.get_mut(&parent) else {
                return Err("the path does not select a list".into());
            };
            if op.kind == Kind::Insert {
                let index = op.index.expect("checked when parsed");
                if index > items.len() {
                    return Err(format!(
                        "index {index} is beyond the list's {} items",
                        items.len()
                    ));
                }
                items.insert(index, op.value.clone().expect("checked when parsed").0);
            } else {
                let (from, to) = (
                    op.source.expect("checked"),
                    op.destination.expect("checked"),
                );
                if from >= items.len() || to >= items.len() {
                    return Err(format!("the list has {} items", items.len()));
                }
                let item = items.remove(from);
                items.insert(to, item);
            }
            Ok(())
        }
        Kind::Delete => {
            if selection.pointers.is_empty() {
                return Ok(());
            }
            let target = one(&selection)?.to_vec();
            let (last, parent) = target
                .split_last()
                .ok_or("the whole resource cannot be deleted")?;
            match doc.get_mut(parent) {
                Some(Node::Array(items)) => {
                    items.remove(last.parse::<usize>().map_err(|e| e.to_string())?);
                    // An emptied list goes, with its key.
                    if items.is_empty()
                        && let Some((key, grand)) = parent.split_last()
                        && let Some(Node::Object(fields)) = doc.get_mut(grand)
                    {
                        fields.retain(|(k, _)| k != key);
                    }
                }
                Some(Node::Object(fields)) => {
                    fields.retain(|(k, _)| k != last && *k != format!("_{last}"))
                }
                _ => return Err("the element cannot be deleted".into()),
            }
            Ok(())
        }
        Kind::Replace => {
            let target = one(&selection)?.to_vec();
            let (value, suffix) = op.value.clone().expect("checked when parsed");
            let (last, parent) = target
                .split_last()
                .ok_or("the whole resource cannot be replaced")?;
            // `Observation.value` holding a Quantity replaced by a string: the key changes.
            let choice = selection
                .elements
                .first()
                .copied()
                .flatten()
                .filter(|e| e.choice);
            if let (Some(element), Some(suffix)) = (choice, suffix) {
                if !element.types.iter().any(|t| is_choice_suffix(t, &suffix)) {
                    return Err(format!("{} cannot hold a {suffix}", element.name));
                }
                let Some(Node::Object(fields)) = doc.get_mut(parent) else {
                    return Err("the element cannot be replaced".into());
                };
                let key = format!("{}{suffix}", element.name);
                fields.retain(|(k, _)| *k != format!("_{last}"));
                match fields.iter().position(|(k, _)| k == last) {
                    Some(position) => fields[position] = (key, value),
                    None => return Err("the element cannot be replaced".into()),
                }
                return Ok(());
            }
            match doc.get_mut(&target) {
                Some(slot) => {
                    *slot = value;
                    Ok(())
                }
                None => Err("the element cannot be replaced".into()),
            }
        }
    }
}

/// Applies a FHIRPath Patch document to `resource`; answers the new resource text.
pub fn apply(resource: &str, document: &str) -> Result<String, PatchError> {
    let ops = parse(document)?;
    let mut doc = Node::parse(resource).map_err(PatchError::Failed)?;
    for (i, op) in ops.iter().enumerate() {
        apply_one(&mut doc, op).map_err(|why| {
            PatchError::Failed(format!(
                "operation {i} ({:?} {}): {why}",
                op.kind,
                op.path.text()
            ))
        })?;
    }
    Ok(doc.to_json())
}
