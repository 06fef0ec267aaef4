//! FHIR JSON seen as FHIRPath nodes: every node knows its FHIR type, taken from the R4 element
//! tables, so that choice elements (`value` → `valueQuantity`), `is`/`as`/`ofType` and the
//! comparison of primitives (a `date` is not a `string`) follow the definitions.

use std::borrow::Cow;

use serde_json::Value;

use crate::validation::{Element, Validator, is_choice_suffix, is_primitive};

/// The FHIR type of a node: its type code, and where its elements are defined (a type's
/// table and a path inside it, "" for the type's root; backbone elements live inside the
/// table of the type that declares them).
#[derive(Debug, Clone, Copy)]
pub struct Ty {
    pub code: &'static str,
    pub table: &'static str,
    pub path: &'static str,
    /// The elements defined at `table`/`path`, looked up once when the type is made.
    elements: &'static [Element],
}

impl Ty {
    const UNKNOWN: Ty = Ty {
        code: "",
        table: "",
        path: "",
        elements: &[],
    };

    fn primitive(code: &'static str) -> Ty {
        Ty {
            code,
            table: "",
            path: "",
            elements: &[],
        }
    }

    fn new(code: &'static str, table: &'static str, path: &'static str) -> Ty {
        Ty {
            code,
            table,
            path,
            elements: model().elements(table, path),
        }
    }

    pub fn is_primitive(&self) -> bool {
        !self.code.is_empty() && is_primitive(self.code)
    }
}

/// An element of a resource: its value (absent for a primitive that only has an `_element`
/// with extensions), the `_element` object of a primitive, and its type.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    pub value: Option<&'a Value>,
    pub ext: Option<&'a Value>,
    pub ty: Ty,
}

/// Called with a child's defining element, JSON key, array index and node.
pub(crate) type ChildVisitor<'v, 'a> =
    dyn FnMut(&'static Element, &str, Option<usize>, Node<'a>) + 'v;

/// A FHIRPath value: an element of the input, or a value computed by the expression.
#[derive(Debug, Clone)]
pub enum Item<'a> {
    Node(Node<'a>),
    Boolean(bool),
    Integer(i64),
    Decimal(f64),
    String(Cow<'a, str>),
    Date(Cow<'a, str>),
    DateTime(Cow<'a, str>),
    Time(Cow<'a, str>),
    Quantity(f64, Cow<'a, str>),
    /// What `resolve()` gives for a reference to a resource outside the one evaluated:
    /// only its type is known.
    Reference(String),
}

fn model() -> &'static Validator {
    Validator::r4()
}

/// A resource node for `value`, typed by its `resourceType`.
pub fn resource(value: &Value) -> Node<'_> {
    let table = value
        .get("resourceType")
        .and_then(Value::as_str)
        .and_then(|rt| model().table_name(rt));
    Node {
        value: Some(value),
        ext: None,
        ty: table.map_or(Ty::UNKNOWN, |t| Ty::new(t, t, "")),
    }
}

/// A node of a given FHIR type (a datatype or a resource).
pub fn typed<'a>(value: &'a Value, type_name: &str) -> Node<'a> {
    if value.get("resourceType").is_some() {
        return resource(value);
    }
    match model().table_name(type_name) {
        Some(t) => Node {
            value: Some(value),
            ext: None,
            ty: Ty::new(t, t, ""),
        },
        None => Node {
            value: Some(value),
            ext: None,
            ty: Ty::UNKNOWN,
        },
    }
}

impl<'a> Node<'a> {
    fn elements(&self) -> &'static [Element] {
        self.ty.elements
    }

    /// The type of a child element holding `value`, declared with type code `code`.
    fn child_type(&self, element: &'static Element, code: &'static str, value: &Value) -> Ty {
        if let Some(reference) = &element.content_reference {
            return Ty::new("BackboneElement", self.ty.table, reference);
        }
        if element.backbone {
            return Ty::new(code, self.ty.table, &element.path);
        }
        if is_primitive(code) {
            return Ty::primitive(code);
        }
        if code == "Resource" || value.get("resourceType").is_some() {
            return resource(value).ty;
        }
        match model().table_name(code) {
            Some(t) => Ty::new(t, t, ""),
            None => Ty::UNKNOWN,
        }
    }

    /// Pushes the nodes stored under `key` (and `_key`) typed as `code`.
    fn push_key(
        &self,
        map: &'a serde_json::Map<String, Value>,
        element: &'static Element,
        key: &str,
        code: &'static str,
        out: &mut Vec<Item<'a>>,
    ) {
        self.visit_key(map, element, key, code, &mut |_, node| {
            out.push(Item::Node(node))
        });
    }

    /// Calls `visit` with the array index (if any) and node of every value under `key`.
    fn visit_key(
        &self,
        map: &'a serde_json::Map<String, Value>,
        element: &'static Element,
        key: &str,
        code: &'static str,
        visit: &mut dyn FnMut(Option<usize>, Node<'a>),
    ) {
        let value = map.get(key);
        let ext = if is_primitive(code) {
            extension_of(map, key)
        } else {
            None
        };
        if value.is_none() && ext.is_none() {
            return;
        }
        match (value, ext) {
            (Some(Value::Array(items)), _) | (None, Some(Value::Array(items))) => {
                let exts = ext.and_then(Value::as_array);
                let values = value.and_then(Value::as_array);
                let n = items.len().max(exts.map_or(0, Vec::len));
                for i in 0..n {
                    let v = values.and_then(|v| v.get(i)).filter(|v| !v.is_null());
                    let e = exts.and_then(|e| e.get(i)).filter(|e| !e.is_null());
                    if v.is_none() && e.is_none() {
                        continue;
                    }
                    let ty = v.map_or(Ty::primitive(code), |v| self.child_type(element, code, v));
                    visit(
                        Some(i),
                        Node {
                            value: v,
                            ext: e,
                            ty,
                        },
                    );
                }
            }
            _ => {
                let v = value.filter(|v| !v.is_null());
                let ty = v.map_or(Ty::primitive(code), |v| self.child_type(element, code, v));
                visit(None, Node { value: v, ext, ty });
            }
        }
    }

    /// Children named `name`: a plain element, a choice element by its stem (`value`), or a
    /// choice element by its full name (`valueQuantity`).
    pub fn member(&self, name: &str, out: &mut Vec<Item<'a>>) {
        let Some(map) = self.value.and_then(Value::as_object) else {
            // A primitive's own children: its id and extensions.
            if let Some(ext) = self.ext.and_then(Value::as_object) {
                self.primitive_children(ext, Some(name), out);
            }
            return;
        };
        if self.ty.table.is_empty() {
            untyped_member(map, name, out);
            return;
        }
        for element in self.elements() {
            if element.choice {
                if name == element.name {
                    // The object's own keys say which type it holds: no key is built.
                    for key in map.keys() {
                        let plain = key.strip_prefix('_').unwrap_or(key);
                        if plain.len() != key.len() && map.contains_key(plain) {
                            continue;
                        }
                        if let Some(suffix) = plain.strip_prefix(name)
                            && let Some(code) =
                                element.types.iter().find(|t| is_choice_suffix(t, suffix))
                        {
                            self.push_key(map, element, plain, code, out);
                        }
                    }
                } else if let Some(suffix) = name.strip_prefix(element.name.as_str())
                    && let Some(code) = element.types.iter().find(|t| is_choice_suffix(t, suffix))
                {
                    self.push_key(map, element, name, code, out);
                }
            } else if element.name == name {
                let code = element.types.first().map_or("", String::as_str);
                self.push_key(map, element, name, code, out);
            }
        }
    }

    /// Every child element with what defines it, its JSON key and array index, in
    /// definition order. Only typed nodes have defined children; primitives' extensions are
    /// left out (they are visited as `_key` objects by the caller's own walk).
    pub(crate) fn visit_children(&self, visit: &mut ChildVisitor<'_, 'a>) {
        let Some(map) = self.value.and_then(Value::as_object) else {
            return;
        };
        let elements = self.elements();
        for key in map.keys() {
            let name = match key.strip_prefix('_') {
                // `_key` beside `key` is visited with it.
                Some(name) if map.contains_key(name) => continue,
                Some(name) => name,
                None => key.as_str(),
            };
            let found = elements.iter().find_map(|e| {
                if !e.choice {
                    return (e.name == name)
                        .then(|| (e, e.types.first().map_or("", String::as_str)));
                }
                let suffix = name.strip_prefix(e.name.as_str())?;
                e.types
                    .iter()
                    .find(|t| is_choice_suffix(t, suffix))
                    .map(|t| (e, t.as_str()))
            });
            if let Some((element, code)) = found {
                self.visit_key(map, element, name, code, &mut |i, n| {
                    visit(element, name, i, n)
                });
            }
        }
    }

    /// Every child, in the object's order.
    pub fn children(&self, out: &mut Vec<Item<'a>>) {
        let Some(map) = self.value.and_then(Value::as_object) else {
            if let Some(ext) = self.ext.and_then(Value::as_object) {
                self.primitive_children(ext, None, out);
            }
            return;
        };
        if self.ty.table.is_empty() {
            for key in map.keys().filter(|k| !k.starts_with('_')) {
                untyped_member(map, key, out);
            }
            return;
        }
        self.visit_children(&mut |_, _, _, node| out.push(Item::Node(node)));
    }

    fn primitive_children(
        &self,
        ext: &'a serde_json::Map<String, Value>,
        only: Option<&str>,
        out: &mut Vec<Item<'a>>,
    ) {
        if only.is_none_or(|n| n == "id")
            && let Some(id) = ext.get("id")
        {
            out.push(Item::Node(Node {
                value: Some(id),
                ext: None,
                ty: Ty::primitive("string"),
            }));
        }
        if only.is_none_or(|n| n == "extension")
            && let Some(Value::Array(items)) = ext.get("extension")
        {
            for item in items {
                out.push(Item::Node(typed(item, "Extension")));
            }
        }
    }
}

/// The definition of the element at a JSON Pointer inside a resource (tokens: keys and array
/// indexes), when the definitions know it.
pub(crate) fn element_at(root: &Value, pointer: &[String]) -> Option<&'static Element> {
    let mut node = resource(root);
    let mut found = None;
    let mut tokens = pointer.iter().peekable();
    while let Some(key) = tokens.next() {
        let index = match tokens.peek() {
            Some(t) if t.bytes().all(|b| b.is_ascii_digit()) => tokens.next()?.parse().ok(),
            _ => None,
        };
        let mut next = None;
        node.visit_children(&mut |element, k, i, child| {
            if k == key && i == index {
                next = Some((element, child));
            }
        });
        let (element, child) = next?;
        found = Some(element);
        node = child;
    }
    found
}

/// The `_key` object beside a primitive `key`, looked up without allocating for the usual
/// short keys.
fn extension_of<'a>(map: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    let mut buffer = [0u8; 64];
    if key.len() < buffer.len() {
        buffer[0] = b'_';
        buffer[1..=key.len()].copy_from_slice(key.as_bytes());
        let underscored = std::str::from_utf8(&buffer[..=key.len()]).ok()?;
        map.get(underscored)
    } else {
        map.get(&format!("_{key}"))
    }
}

/// Navigation where the definitions say nothing (a type without a table): by JSON key.
fn untyped_member<'a>(
    map: &'a serde_json::Map<String, Value>,
    name: &str,
    out: &mut Vec<Item<'a>>,
) {
    let push = |v: &'a Value, out: &mut Vec<Item<'a>>| {
        let node = if v.get("resourceType").is_some() {
            resource(v)
        } else {
            Node {
                value: Some(v),
                ext: None,
                ty: Ty::UNKNOWN,
            }
        };
        out.push(Item::Node(node));
    };
    match map.get(name) {
        Some(Value::Array(items)) => items
            .iter()
            .filter(|v| !v.is_null())
            .for_each(|v| push(v, out)),
        Some(Value::Null) | None => {}
        Some(v) => push(v, out),
    }
}

/// Whether a FHIR type code is `name` or derives from it.
pub fn is_a(code: &str, name: &str) -> bool {
    if code == name {
        return true;
    }
    let parent = match code {
        "code" | "id" | "markdown" => "string",
        "url" | "canonical" | "oid" | "uuid" => "uri",
        "positiveInt" | "unsignedInt" => "integer",
        "Age" | "Count" | "Distance" | "Duration" | "SimpleQuantity" | "MoneyQuantity" => {
            "Quantity"
        }
        "Bundle" | "Binary" | "Parameters" => "Resource",
        "DomainResource" => "Resource",
        "BackboneElement" => "Element",
        _ if crate::definitions::Definitions::r4()
            .resource_type(code)
            .is_some() =>
        {
            "DomainResource"
        }
        _ if model().table_name(code).is_some() => "Element",
        _ => return false,
    };
    is_a(parent, name)
}

/// The system value of a primitive node (`Patient.birthDate` → a Date), or of a Quantity.
pub fn system_value<'a>(node: &Node<'a>) -> Option<Item<'a>> {
    let value = node.value?;
    let code = node.ty.code;
    if !node.ty.is_primitive() {
        if is_a(code, "Quantity") {
            let number = value.get("value")?.as_f64()?;
            let unit = value
                .get("code")
                .or_else(|| value.get("unit"))
                .and_then(Value::as_str)
                .unwrap_or("1");
            return Some(Item::Quantity(number, Cow::Borrowed(unit)));
        }
        return None;
    }
    Some(match value {
        Value::Bool(b) => Item::Boolean(*b),
        Value::Number(n) => match (code, n.as_i64()) {
            ("integer" | "positiveInt" | "unsignedInt" | "System.Integer", Some(i)) => {
                Item::Integer(i)
            }
            _ => Item::Decimal(n.as_f64()?),
        },
        Value::String(s) => match code {
            "date" | "System.Date" => Item::Date(Cow::Borrowed(s)),
            "dateTime" | "instant" | "System.DateTime" => {
                if s.contains('T') {
                    Item::DateTime(Cow::Borrowed(s))
                } else {
                    Item::Date(Cow::Borrowed(s))
                }
            }
            "time" | "System.Time" => Item::Time(Cow::Borrowed(s)),
            _ => Item::String(Cow::Borrowed(s)),
        },
        _ => return None,
    })
}

/// The type name of an item, for `is`, `as` and `ofType`.
pub fn item_is(item: &Item<'_>, namespace: Option<&str>, name: &str) -> bool {
    let system = |expected: &str| namespace != Some("FHIR") && name == expected;
    match item {
        Item::Node(node) if node.ty.is_primitive() && namespace != Some("FHIR") => {
            // A FHIR primitive is also its System type: `answer is Boolean` (que-7).
            let system_type = match node.ty.code {
                "boolean" => "Boolean",
                "integer" | "positiveInt" | "unsignedInt" => "Integer",
                "decimal" => "Decimal",
                "date" => "Date",
                "dateTime" | "instant" => "DateTime",
                "time" => "Time",
                code => code.strip_prefix("System.").unwrap_or("String"),
            };
            name == system_type || (namespace.is_none() && is_a(node.ty.code, name))
        }
        Item::Node(node) => {
            namespace != Some("System") && !node.ty.code.is_empty() && is_a(node.ty.code, name)
        }
        Item::Boolean(_) => system("Boolean"),
        Item::Integer(_) => system("Integer"),
        Item::Decimal(_) => system("Decimal"),
        Item::String(_) => system("String"),
        Item::Date(_) => system("Date"),
        Item::DateTime(_) => system("DateTime"),
        Item::Time(_) => system("Time"),
        Item::Quantity(..) => system("Quantity"),
        Item::Reference(rt) => namespace != Some("System") && is_a(rt, name),
    }
}
