//! SMART on FHIR scopes: what a token's `scope` claim grants.
//!
//! v2 scopes name a context, a resource type (or `*`) and the interactions allowed, as letters
//! in the order `c r u d s`: `patient/Observation.rs`, `user/*.cruds`, `system/*.r`. v1 scopes
//! are read as their v2 equivalents: `.read` is `rs`, `.write` is `cud`, `.*` is `cruds`.
//! Anything else (`openid`, `fhirUser`, `launch/patient`, `offline_access`, a malformed word)
//! grants nothing. A v2 scope narrowed by search parameters (`patient/Observation.rs?category=
//! laboratory`) grants nothing either until Sen enforces those parameters: a narrower grant
//! read as a wider one would show what the client was never meant to see.

/// The context a scope applies in: the patient in the token's launch context, the user the
/// token speaks for, or a backend system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeContext {
    Patient,
    User,
    System,
}

impl ScopeContext {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "patient" => Some(Self::Patient),
            "user" => Some(Self::User),
            "system" => Some(Self::System),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Patient => "patient",
            Self::User => "user",
            Self::System => "system",
        }
    }
}

/// A FHIR interaction as SMART v2 scopes name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Interaction {
    /// Every interaction, in SMART's letter order `c r u d s`.
    pub const ALL: [Interaction; 5] = [
        Self::Create,
        Self::Read,
        Self::Update,
        Self::Delete,
        Self::Search,
    ];

    fn letter(self) -> char {
        match self {
            Self::Create => 'c',
            Self::Read => 'r',
            Self::Update => 'u',
            Self::Delete => 'd',
            Self::Search => 's',
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Read => "read",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Search => "search",
        }
    }
}

/// One resource scope: a context, a resource type (`None` for `*`), the interactions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceScope {
    pub context: ScopeContext,
    pub resource_type: Option<String>,
    permissions: u8,
}

impl ResourceScope {
    /// Parses one word of a `scope` claim; `None` when it is not a resource scope Sen grants.
    pub fn parse(word: &str) -> Option<Self> {
        let (context, rest) = word.split_once('/')?;
        let context = ScopeContext::parse(context)?;
        let (resource, permissions) = rest.split_once('.')?;
        let resource_type = match resource {
            "*" => None,
            name if is_type_name(name) => Some(name.to_string()),
            _ => return None,
        };
        let permissions = match permissions {
            "read" => Interaction::Read.bit() | Interaction::Search.bit(),
            "write" => {
                Interaction::Create.bit() | Interaction::Update.bit() | Interaction::Delete.bit()
            }
            "*" => Interaction::ALL.iter().fold(0, |bits, i| bits | i.bit()),
            letters => v2_permissions(letters)?,
        };
        Some(Self {
            context,
            resource_type,
            permissions,
        })
    }

    pub fn allows(&self, interaction: Interaction, resource_type: &str) -> bool {
        self.permissions & interaction.bit() != 0
            && self
                .resource_type
                .as_deref()
                .is_none_or(|t| t == resource_type)
    }
}

/// `cruds` letters in order, each at most once, at least one; `None` otherwise (including a
/// `?query` narrowing, see the module documentation).
fn v2_permissions(letters: &str) -> Option<u8> {
    let mut bits = 0u8;
    let mut next = 0;
    for c in letters.chars() {
        let at = Interaction::ALL[next..]
            .iter()
            .position(|i| i.letter() == c)?;
        bits |= Interaction::ALL[next + at].bit();
        next += at + 1;
    }
    (bits != 0).then_some(bits)
}

fn is_type_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_uppercase())
        && name.chars().all(|c| c.is_ascii_alphanumeric())
}

/// The resource scopes of a token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    granted: Vec<ResourceScope>,
}

impl Scopes {
    /// The resource scopes in a space-separated `scope` claim.
    pub fn parse(claim: &str) -> Self {
        Self {
            granted: claim
                .split_ascii_whitespace()
                .filter_map(ResourceScope::parse)
                .collect(),
        }
    }

    /// Whether a scope of `context` allows `interaction` on `resource_type`.
    pub fn allows(
        &self,
        context: ScopeContext,
        interaction: Interaction,
        resource_type: &str,
    ) -> bool {
        self.granted
            .iter()
            .any(|s| s.context == context && s.allows(interaction, resource_type))
    }

    pub fn is_empty(&self) -> bool {
        self.granted.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Interaction::*;
    use ScopeContext::*;

    #[test]
    fn v2_letters_grant_exactly_the_interactions_they_name() {
        let scopes = Scopes::parse("openid fhirUser patient/Observation.rs user/*.cu");
        assert!(scopes.allows(Patient, Read, "Observation"));
        assert!(scopes.allows(Patient, Search, "Observation"));
        assert!(!scopes.allows(Patient, Update, "Observation"));
        assert!(!scopes.allows(Patient, Read, "Patient"));
        assert!(!scopes.allows(User, Read, "Observation"), "context matters");
        assert!(scopes.allows(User, Create, "Encounter"));
        assert!(scopes.allows(User, Update, "Patient"));
        assert!(!scopes.allows(User, Delete, "Patient"));
        assert!(!scopes.allows(System, Create, "Patient"));
    }

    #[test]
    fn v1_scopes_read_as_their_v2_equivalents() {
        let scopes = Scopes::parse("system/Patient.read system/Observation.write user/*.*");
        assert!(scopes.allows(System, Read, "Patient") && scopes.allows(System, Search, "Patient"));
        assert!(!scopes.allows(System, Create, "Patient"));
        assert!(scopes.allows(System, Delete, "Observation"));
        assert!(!scopes.allows(System, Read, "Observation"));
        assert!(
            Interaction::ALL
                .iter()
                .all(|i| scopes.allows(User, *i, "Consent"))
        );
    }

    #[test]
    fn malformed_narrowed_and_unknown_scopes_grant_nothing() {
        for word in [
            "patient/Observation.rs?category=laboratory",
            "patient/Observation.sr",
            "patient/Observation.rr",
            "patient/Observation.",
            "patient/observation.rs",
            "admin/*.cruds",
            "system/*",
            "launch/patient",
            "*/*.cruds",
            "system/Patient.x",
        ] {
            assert!(Scopes::parse(word).is_empty(), "{word} grants nothing");
        }
    }
}
