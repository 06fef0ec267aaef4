//! Profiles: StructureDefinitions that constrain R4 types (ours are in `fhir-profiles/vn/`,
//! compiled in; more can be loaded from a directory at start-up), with the CodeSystems and
//! ValueSets they bind to.
//!
//! A profile's differential is compiled into rules, each checked on every instance of the
//! element it names: cardinality, fixed and pattern values, required bindings, FHIRPath
//! constraints, and extensions (sliced by their profile's URL) checked against their own
//! extension profile. What a differential asks that this engine cannot check (slicing other
//! than of extensions, `maxLength`, `minValue`, …) stops loading with a message naming the
//! file and element, rather than being silently ignored.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use serde_json::Value;

use crate::{
    definitions::Definitions,
    fhirpath::{self, Env, Expression, Item, Node},
    validation::{Problem, ProblemKind, Severity, Validator, is_choice_suffix},
};

/// The profiles Sen ships, compiled in (a test checks this list against the directory).
pub const BUILTIN: &[(&str, &str)] = &[
    builtin!("CodeSystem-vn-administrative-units.json"),
    builtin!("CodeSystem-vn-ethnic-groups.json"),
    builtin!("ValueSet-circular-30-remote-icd10.json"),
    builtin!("ValueSet-dong-thap-administrative-units.json"),
    builtin!("ValueSet-vn-ethnic-groups.json"),
    builtin!("StructureDefinition-sen-vn-address-ward.json"),
    builtin!("StructureDefinition-sen-vn-ethnicity.json"),
    builtin!("StructureDefinition-sen-vn-appointment.json"),
    builtin!("StructureDefinition-sen-vn-encounter-remote.json"),
    builtin!("StructureDefinition-sen-vn-organization.json"),
    builtin!("StructureDefinition-sen-vn-patient.json"),
    builtin!("StructureDefinition-sen-vn-practitioner.json"),
    builtin!("StructureDefinition-sen-vn-schedule.json"),
    builtin!("StructureDefinition-sen-vn-slot.json"),
];

macro_rules! builtin {
    ($file:literal) => {
        (
            $file,
            include_str!(concat!("../../../fhir-profiles/vn/", $file)),
        )
    };
}
use builtin;

/// A profile that cannot be loaded: which file, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("profile {file}: {message}")]
pub struct ProfileError {
    pub file: String,
    pub message: String,
}

/// The codes of a value set; `partial` when it draws on a code system published as a
/// fragment, so that a code outside it may still be right.
#[derive(Debug, Default)]
struct Codes {
    by_system: HashMap<String, HashSet<String>>,
    partial: bool,
}

/// What a rule checks on each instance of its element.
#[derive(Debug)]
enum Check {
    Min(usize),
    Max(usize),
    Fixed(Value),
    Pattern(Value),
    Binding(String),
    Extension(String),
    Constraint {
        key: String,
        severity: Severity,
        human: String,
        expression: Expression,
    },
}

/// Which children of a parent instance a rule looks at.
#[derive(Debug)]
enum Child {
    /// The parent itself (constraints on the profile's root).
    Itself,
    Named(String),
    /// Extensions with this URL.
    Extension(String),
}

#[derive(Debug)]
struct Rule {
    /// Element id, for messages (`Patient.extension:ethnicity`).
    element: String,
    /// Where the parents are; none for the root.
    parent: Option<Expression>,
    child: Child,
    checks: Vec<Check>,
}

/// A compiled profile.
#[derive(Debug)]
pub struct Profile {
    pub url: String,
    pub name: String,
    /// The type it constrains (`Patient`, `Extension`).
    pub type_name: String,
    rules: Vec<Rule>,
}

/// The profiles, value sets and code systems known to this server.
#[derive(Debug, Default)]
pub struct Registry {
    profiles: HashMap<String, Profile>,
    value_sets: HashMap<String, Codes>,
    /// Code systems: their codes and whether they are complete.
    code_systems: HashMap<String, (HashSet<String>, bool)>,
}

impl Registry {
    /// The built-in profiles, then every `*.json` of `dir` (which may replace them by URL).
    pub fn load(dir: Option<&Path>) -> Result<Registry, ProfileError> {
        let mut files: Vec<(String, String)> = BUILTIN
            .iter()
            .map(|(f, text)| (format!("fhir-profiles/vn/{f} (built in)"), text.to_string()))
            .collect();
        if let Some(dir) = dir {
            let error = |message: String| ProfileError {
                file: dir.display().to_string(),
                message,
            };
            let entries = std::fs::read_dir(dir).map_err(|e| error(e.to_string()))?;
            let mut paths: Vec<_> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect();
            paths.sort();
            for path in paths {
                let text = std::fs::read_to_string(&path).map_err(|e| ProfileError {
                    file: path.display().to_string(),
                    message: e.to_string(),
                })?;
                files.push((path.display().to_string(), text));
            }
        }
        Self::from_texts(&files)
    }

    /// Builds the registry from (file name, JSON text) pairs.
    pub fn from_texts(files: &[(String, String)]) -> Result<Registry, ProfileError> {
        let mut parsed = Vec::new();
        for (file, text) in files {
            let value: Value = serde_json::from_str(text).map_err(|e| ProfileError {
                file: file.clone(),
                message: format!("not JSON: {e}"),
            })?;
            parsed.push((file.as_str(), value));
        }
        let mut registry = Registry::default();
        // Code systems, then value sets, then profiles: each may refer to the ones before.
        for kind in ["CodeSystem", "ValueSet", "StructureDefinition"] {
            for (file, value) in &parsed {
                let rt = value.get("resourceType").and_then(Value::as_str);
                let known = matches!(rt, Some("CodeSystem" | "ValueSet" | "StructureDefinition"));
                if !known {
                    return Err(ProfileError {
                        file: file.to_string(),
                        message: format!(
                            "expected a StructureDefinition, ValueSet or CodeSystem, not {rt:?}"
                        ),
                    });
                }
                if rt != Some(kind) {
                    continue;
                }
                let result = match kind {
                    "CodeSystem" => registry.add_code_system(value),
                    "ValueSet" => registry.add_value_set(value),
                    _ => registry.add_profile(value),
                };
                result.map_err(|message| ProfileError {
                    file: file.to_string(),
                    message,
                })?;
            }
        }
        // Extension profiles named by a profile must be known.
        for profile in registry.profiles.values() {
            for rule in &profile.rules {
                for check in &rule.checks {
                    if let Check::Extension(url) = check
                        && !registry.profiles.contains_key(url)
                    {
                        return Err(ProfileError {
                            file: profile.url.clone(),
                            message: format!("{}: unknown extension profile {url}", rule.element),
                        });
                    }
                }
            }
        }
        Ok(registry)
    }

    pub fn profile(&self, url: &str) -> Option<&Profile> {
        self.profiles.get(url.split('|').next().unwrap_or(url))
    }

    /// Every profile's URL, sorted.
    /// The codes of `system` in the value set `url` (empty when unknown).
    pub fn value_set_codes(&self, url: &str, system: &str) -> Vec<String> {
        self.value_sets
            .get(url)
            .and_then(|codes| codes.by_system.get(system))
            .map(|codes| codes.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn urls(&self) -> Vec<&str> {
        let mut urls: Vec<&str> = self.profiles.keys().map(String::as_str).collect();
        urls.sort_unstable();
        urls
    }

    fn add_code_system(&mut self, cs: &Value) -> Result<(), String> {
        let url = text(cs, "url")?;
        let content = cs
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or("complete");
        fn walk(concepts: Option<&Value>, out: &mut HashSet<String>) {
            for c in concepts.and_then(Value::as_array).into_iter().flatten() {
                if let Some(code) = c.get("code").and_then(Value::as_str) {
                    out.insert(code.to_string());
                }
                walk(c.get("concept"), out);
            }
        }
        let mut codes = HashSet::new();
        walk(cs.get("concept"), &mut codes);
        if codes.is_empty() {
            return Err(format!("code system {url} lists no concepts"));
        }
        self.code_systems
            .insert(url.to_string(), (codes, content == "complete"));
        Ok(())
    }

    fn add_value_set(&mut self, vs: &Value) -> Result<(), String> {
        let url = text(vs, "url")?;
        let includes = vs
            .pointer("/compose/include")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("value set {url} has no compose.include"))?;
        if vs.pointer("/compose/exclude").is_some() {
            return Err(format!("value set {url}: compose.exclude is not supported"));
        }
        let mut codes = Codes::default();
        for include in includes {
            if include.get("filter").is_some() || include.get("valueSet").is_some() {
                return Err(format!(
                    "value set {url}: only includes of a system with or without listed concepts are supported"
                ));
            }
            let system = text(include, "system")?;
            let known = self.code_systems.get(system);
            let set = codes.by_system.entry(system.to_string()).or_default();
            match include.get("concept").and_then(Value::as_array) {
                Some(concepts) => {
                    for c in concepts {
                        let code = text(c, "code")?;
                        if let Some((all, _)) = known
                            && !all.contains(code)
                        {
                            return Err(format!(
                                "value set {url}: {code} is not a code of {system}"
                            ));
                        }
                        set.insert(code.to_string());
                    }
                }
                None => {
                    let (all, _) = known.ok_or_else(|| {
                        format!("value set {url} includes all of {system}, which is not loaded")
                    })?;
                    set.extend(all.iter().cloned());
                }
            }
            if known.is_some_and(|(_, complete)| !complete) {
                codes.partial = true;
            }
        }
        self.value_sets.insert(url.to_string(), codes);
        Ok(())
    }

    fn add_profile(&mut self, sd: &Value) -> Result<(), String> {
        let url = text(sd, "url")?.to_string();
        let type_name = text(sd, "type")?.to_string();
        if sd.get("derivation").and_then(Value::as_str) != Some("constraint") {
            return Err(format!("{url} is not a constraint on a base type"));
        }
        let base = format!("http://hl7.org/fhir/StructureDefinition/{type_name}");
        if sd.get("baseDefinition").and_then(Value::as_str) != Some(base.as_str()) {
            return Err(format!(
                "{url}: only profiles of the base types are supported (baseDefinition {base})"
            ));
        }
        let is_resource = Definitions::r4().resource_type(&type_name).is_some();
        if !is_resource && type_name != "Extension" {
            return Err(format!("{url}: profiles of {type_name} are not supported"));
        }
        let elements = sd
            .pointer("/differential/element")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("{url} has no differential"))?;
        let mut rules = Vec::new();
        for element in elements {
            rules.push(self.rule(&type_name, element)?);
        }
        let name = sd
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or(&url)
            .to_string();
        self.profiles.insert(
            url.clone(),
            Profile {
                url,
                name,
                type_name,
                rules,
            },
        );
        Ok(())
    }

    fn rule(&self, type_name: &str, element: &Value) -> Result<Rule, String> {
        let path = text(element, "path")?;
        let id = element.get("id").and_then(Value::as_str).unwrap_or(path);
        let at = |m: String| format!("{id}: {m}");
        const DOCUMENTATION: [&str; 12] = [
            "id",
            "path",
            "short",
            "definition",
            "comment",
            "requirements",
            "alias",
            "mustSupport",
            "isSummary",
            "label",
            "example",
            "extension",
        ];
        for key in element.as_object().into_iter().flatten().map(|(k, _)| k) {
            let checked = matches!(
                key.as_str(),
                "min" | "max" | "type" | "binding" | "constraint" | "sliceName" | "slicing"
            ) || key.starts_with("fixed")
                || key.starts_with("pattern");
            if !checked && !DOCUMENTATION.contains(&key.as_str()) {
                return Err(at(format!("{key} is not supported in profiles yet")));
            }
        }
        let segments: Vec<&str> = path.split('.').collect();
        if segments[0] != type_name {
            return Err(at(format!("the path must start with {type_name}")));
        }
        if id.split('.').rev().skip(1).any(|s| s.contains(':')) {
            return Err(at(
                "elements inside a slice are not supported; give the extension its own profile"
                    .into(),
            ));
        }
        check_path(type_name, &segments[1..]).map_err(at)?;
        let slice = element.get("sliceName").and_then(Value::as_str);
        let child = match (segments.len(), slice) {
            (1, _) => Child::Itself,
            (_, Some(_)) => {
                let profile = element
                    .pointer("/type/0/profile/0")
                    .and_then(Value::as_str)
                    .filter(|_| segments.last() == Some(&"extension"))
                    .ok_or_else(|| at("only extensions may be sliced, by their profile".into()))?;
                Child::Extension(profile.to_string())
            }
            _ => Child::Named(
                segments[segments.len() - 1]
                    .trim_end_matches("[x]")
                    .to_string(),
            ),
        };
        if element.get("slicing").is_some() && segments.last() != Some(&"extension") {
            return Err(at("only extensions may be sliced".into()));
        }
        let mut checks = Vec::new();
        if let Some(min) = element.get("min").and_then(Value::as_u64)
            && min > 0
            && segments.len() > 1
        {
            checks.push(Check::Min(min as usize));
        }
        match element.get("max").and_then(Value::as_str) {
            Some("*") | None => {}
            Some(_) if segments.len() == 1 => {}
            Some(max) => checks
                .push(Check::Max(max.parse().map_err(|_| {
                    at(format!("max {max:?} is not a number or *"))
                })?)),
        }
        for (key, value) in element.as_object().into_iter().flatten() {
            if key.starts_with("fixed") {
                checks.push(Check::Fixed(value.clone()));
            } else if key.starts_with("pattern") {
                checks.push(Check::Pattern(value.clone()));
            }
        }
        if let Some(binding) = element.get("binding") {
            let strength = binding.get("strength").and_then(Value::as_str);
            let vs = binding
                .get("valueSet")
                .and_then(Value::as_str)
                .map(|u| u.split('|').next().unwrap_or(u));
            if strength == Some("required") {
                let vs = vs.ok_or_else(|| at("a required binding needs a valueSet".into()))?;
                if !self.value_sets.contains_key(vs) && !Validator::r4().knows_value_set(vs) {
                    return Err(at(format!("binds to an unknown value set {vs}")));
                }
                checks.push(Check::Binding(vs.to_string()));
            }
        }
        if let Child::Extension(url) = &child {
            checks.push(Check::Extension(url.clone()));
        }
        for c in element
            .get("constraint")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = text(c, "key").map_err(&at)?.to_string();
            let expression = Expression::parse(text(c, "expression").map_err(&at)?)
                .map_err(|e| at(format!("{key}: {e}")))?;
            checks.push(Check::Constraint {
                severity: if c.get("severity").and_then(Value::as_str) == Some("warning") {
                    Severity::Warning
                } else {
                    Severity::Error
                },
                human: c
                    .get("human")
                    .and_then(Value::as_str)
                    .unwrap_or(&key)
                    .to_string(),
                key,
                expression,
            });
        }
        let parent = if segments.len() > 1 {
            let text = segments[..segments.len() - 1].join(".");
            Some(Expression::parse(&text).map_err(|e| at(e.to_string()))?)
        } else {
            None
        };
        Ok(Rule {
            element: id.to_string(),
            parent,
            child,
            checks,
        })
    }

    /// Every problem of `resource` against the profile at `url`.
    pub fn check(&self, profile: &Profile, resource: &Value) -> Vec<Problem> {
        let mut problems = Vec::new();
        let root = fhirpath::resource_node(resource);
        let at = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("Resource")
            .to_string();
        self.check_node(profile, root, resource, &at, &mut problems);
        problems
    }

    fn check_node<'a>(
        &self,
        profile: &Profile,
        root: Item<'a>,
        root_value: &'a Value,
        root_at: &str,
        problems: &mut Vec<Problem>,
    ) {
        let env = Env {
            resource: Some(root.clone()),
            root_resource: None,
            context: Some(root.clone()),
        };
        let locate = |node: &Node<'_>| match node.value {
            Some(v) => fhirpath::location(root_value, v)
                .map(|rel| format!("{root_at}{rel}"))
                .unwrap_or_else(|| root_at.to_string()),
            None => root_at.to_string(),
        };
        let report = |problems: &mut Vec<Problem>, kind, severity, at: String, message: String| {
            problems.push(Problem {
                kind,
                severity,
                expression: at,
                message: format!("profile {}: {message}", profile.name),
            })
        };
        for rule in &profile.rules {
            let parents = match &rule.parent {
                None => vec![root.clone()],
                Some(expr) => expr
                    .evaluate(std::slice::from_ref(&root), &env)
                    .unwrap_or_default(),
            };
            for parent in parents {
                let Item::Node(parent) = parent else { continue };
                let children: Vec<Node<'a>> = match &rule.child {
                    Child::Itself => vec![parent],
                    Child::Named(name) => {
                        let mut out = Vec::new();
                        parent.member(name, &mut out);
                        nodes(out)
                    }
                    Child::Extension(url) => {
                        let mut out = Vec::new();
                        parent.member("extension", &mut out);
                        nodes(out)
                            .into_iter()
                            .filter(|n| {
                                n.value.and_then(|v| v.get("url")).and_then(Value::as_str)
                                    == Some(url.as_str())
                            })
                            .collect()
                    }
                };
                let name = rule.element.rsplit('.').next().unwrap_or_default();
                for check in &rule.checks {
                    match check {
                        Check::Min(min) if children.len() < *min => report(
                            problems,
                            ProblemKind::Required,
                            Severity::Error,
                            format!(
                                "{}.{}",
                                locate(&parent),
                                name.split(':').next().unwrap_or(name)
                            ),
                            format!(
                                "{} needs at least {min}, found {}",
                                rule.element,
                                children.len()
                            ),
                        ),
                        Check::Max(max) if children.len() > *max => report(
                            problems,
                            ProblemKind::Structure,
                            Severity::Error,
                            locate(&children[*max]),
                            format!(
                                "{} allows at most {max}, found {}",
                                rule.element,
                                children.len()
                            ),
                        ),
                        _ => {}
                    }
                }
                for child in &children {
                    for check in &rule.checks {
                        match check {
                            Check::Min(_) | Check::Max(_) => {}
                            Check::Fixed(expected) => {
                                if child.value != Some(expected) {
                                    report(
                                        problems,
                                        ProblemKind::Value,
                                        Severity::Error,
                                        locate(child),
                                        format!("{} must be exactly {expected}", rule.element),
                                    );
                                }
                            }
                            Check::Pattern(pattern) => {
                                if !child.value.is_some_and(|v| matches_pattern(v, pattern)) {
                                    report(
                                        problems,
                                        ProblemKind::Value,
                                        Severity::Error,
                                        locate(child),
                                        format!("{} must match {pattern}", rule.element),
                                    );
                                }
                            }
                            Check::Binding(vs) => {
                                if let Some(verdict) = self.binding(vs, child) {
                                    let severity = if verdict.partial {
                                        Severity::Warning
                                    } else {
                                        Severity::Error
                                    };
                                    let note = if verdict.partial {
                                        " (the value set is published in part; check the code)"
                                    } else {
                                        ""
                                    };
                                    report(
                                        problems,
                                        ProblemKind::Value,
                                        severity,
                                        locate(child),
                                        format!(
                                            "{} has a code outside the value set {vs}{note}",
                                            rule.element
                                        ),
                                    );
                                }
                            }
                            Check::Extension(url) => {
                                let (Some(ext), Some(value)) =
                                    (self.profiles.get(url), child.value)
                                else {
                                    continue;
                                };
                                let item = fhirpath::typed_node(value, "Extension");
                                self.check_node(ext, item, value, &locate(child), problems);
                            }
                            Check::Constraint {
                                key,
                                severity,
                                human,
                                expression,
                            } => {
                                let env = Env {
                                    context: Some(Item::Node(*child)),
                                    ..env.clone()
                                };
                                match expression.evaluate(&[Item::Node(*child)], &env) {
                                    Ok(result) if fhirpath::satisfied(&result) => {}
                                    Ok(_) => report(
                                        problems,
                                        ProblemKind::Invariant,
                                        *severity,
                                        locate(child),
                                        format!("{key}: {human}"),
                                    ),
                                    Err(e) => report(
                                        problems,
                                        ProblemKind::Invariant,
                                        Severity::Error,
                                        locate(child),
                                        format!("{key} cannot be evaluated on this resource: {e}"),
                                    ),
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Whether a code (of `system`, when given) is in a value set of ours or of the base
    /// specification.
    fn in_value_set(&self, vs: &str, system: Option<&str>, code: &str) -> bool {
        match self.value_sets.get(vs) {
            Some(codes) => match system {
                Some(s) => codes.by_system.get(s).is_some_and(|c| c.contains(code)),
                None => codes.by_system.values().any(|c| c.contains(code)),
            },
            None => Validator::r4().value_set_has(vs, system, code),
        }
    }

    /// `Some` when the node's code is outside the value set: codes, Codings, and
    /// CodeableConcepts (at least one coding must be in it).
    fn binding(&self, vs: &str, node: &Node<'_>) -> Option<Verdict> {
        let value = node.value?;
        let partial = self.value_sets.get(vs).is_some_and(|c| c.partial);
        let contains = |system: Option<&str>, code: &str| self.in_value_set(vs, system, code);
        let coding_ok = |c: &Value| {
            c.get("code")
                .and_then(Value::as_str)
                .is_some_and(|code| contains(c.get("system").and_then(Value::as_str), code))
        };
        let ok = match value {
            Value::String(code) => contains(None, code),
            Value::Object(_) if value.get("coding").is_some() => value
                .get("coding")
                .and_then(Value::as_array)
                .is_some_and(|codings| codings.iter().any(coding_ok)),
            Value::Object(_) => coding_ok(value),
            _ => true,
        };
        (!ok).then_some(Verdict { partial })
    }
}

struct Verdict {
    partial: bool,
}

fn nodes(items: Vec<Item<'_>>) -> Vec<Node<'_>> {
    items
        .into_iter()
        .filter_map(|i| match i {
            Item::Node(n) => Some(n),
            _ => None,
        })
        .collect()
}

fn text<'v>(value: &'v Value, key: &str) -> Result<&'v str, String> {
    value
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{key} is missing"))
}

/// Whether `actual` has everything `pattern` has (arrays: each pattern item in some item).
fn matches_pattern(actual: &Value, pattern: &Value) -> bool {
    match (actual, pattern) {
        (Value::Object(a), Value::Object(p)) => p
            .iter()
            .all(|(k, pv)| a.get(k).is_some_and(|av| matches_pattern(av, pv))),
        (Value::Array(a), Value::Array(p)) => p
            .iter()
            .all(|pv| a.iter().any(|av| matches_pattern(av, pv))),
        _ => actual == pattern,
    }
}

/// Checks that a differential path names elements of the base type.
fn check_path(type_name: &str, segments: &[&str]) -> Result<(), String> {
    let model = Validator::r4();
    let (mut table, mut parent) = (type_name.to_string(), String::new());
    for segment in segments {
        let name = segment.trim_end_matches("[x]");
        let element = model
            .elements(&table, &parent)
            .iter()
            .find(|e| {
                e.name == name
                    || (e.choice
                        && segment
                            .strip_prefix(e.name.as_str())
                            .is_some_and(|s| e.types.iter().any(|t| is_choice_suffix(t, s))))
            })
            .ok_or_else(|| format!("{segment} is not an element of {type_name}"))?;
        if let Some(reference) = &element.content_reference {
            parent = reference.clone();
        } else if element.backbone {
            parent = element.path.clone();
        } else {
            table = element.types.first().cloned().unwrap_or_default();
            parent = String::new();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
