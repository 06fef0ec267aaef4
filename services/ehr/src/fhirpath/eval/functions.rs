//! The function library: `where`, `exists`, string and math functions, `resolve()`, `now()`
//! and the rest the specification lists, with their arguments.

use super::*;

/// Evaluates a function argument once per input item, with `$this` bound.
pub(super) fn each<'a>(
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
pub(super) fn argument<'a>(arg: Option<&Expr>, f: Frame<'_, 'a>) -> Result<Items<'a>, EvalError> {
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

pub(super) fn string_argument(
    arg: Option<&Expr>,
    f: Frame<'_, '_>,
) -> Result<Option<String>, EvalError> {
    Ok(singleton(&argument(arg, f)?)?.and_then(string_of))
}

pub(super) fn integer_argument(
    arg: Option<&Expr>,
    f: Frame<'_, '_>,
) -> Result<Option<i64>, EvalError> {
    match singleton_value(&argument(arg, f)?)? {
        None => Ok(None),
        Some(Item::Integer(i)) => Ok(Some(i)),
        Some(_) => fail("expected an integer"),
    }
}

pub(super) fn call<'a>(
    func: &Function,
    input: Items<'a>,
    f: Frame<'_, 'a>,
) -> Result<Items<'a>, EvalError> {
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
pub(super) fn resolve<'a>(item: &Item<'a>, env: &Env<'a>) -> Option<Item<'a>> {
    let reference = match item {
        Item::Node(n) if n.ty.is_primitive() => n.value?.as_str()?,
        Item::Node(n) => n.value?.get("reference")?.as_str()?,
        Item::String(s) => return resolve_text(s, env),
        _ => return None,
    };
    resolve_text(reference, env)
}

pub(super) fn resolve_text<'a>(reference: &str, env: &Env<'a>) -> Option<Item<'a>> {
    if let Some(id) = reference.strip_prefix('#') {
        let Some(Item::Node(root)) = env.root_resource.as_ref().or(env.resource.as_ref()) else {
            return None;
        };
        let contained = root.value?.get("contained")?.as_array()?;
        return contained
            .iter()
            .find(|c| c.get("id").and_then(Value::as_str) == Some(id))
            .map(|c| Item::Node(crate::fhirpath::model::resource(c)));
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
pub(super) fn html_checks(item: &Item<'_>) -> bool {
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

pub(super) fn item_string(item: &Item<'_>) -> Option<String> {
    match item {
        Item::Node(Node {
            value: Some(Value::String(s)),
            ..
        }) => Some(s.clone()),
        Item::String(s) => Some(s.to_string()),
        _ => None,
    }
}

pub(super) fn now() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub(super) fn today() -> String {
    now().chars().take(10).collect()
}
