//! Search criteria the store can answer before the full search engine exists: `_id` and
//! `identifier` (token: `system|value`, `|value`, `system|`, `value`; commas for OR,
//! repetition for AND). Conditional create and the basic search use them.

use crate::{definitions::ResourceType, error::EhrError};

/// One side of a token match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenMatch {
    Any,
    Exactly(String),
}

/// `system|code` with either side free.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenValue {
    pub system: TokenMatch,
    pub code: TokenMatch,
}

/// Parsed criteria: all must hold (AND); inner lists are alternatives (OR).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Criteria {
    pub ids: Option<Vec<String>>,
    pub identifiers: Vec<Vec<TokenValue>>,
}

/// Splits `value` at unescaped `sep` and removes the escapes of FHIR search values.
fn split_escaped(value: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n @ ('\\' | ',' | '|' | '$')) if n != sep => {
                    // Keep the escape for the next split level.
                    parts.last_mut().expect("one part").push('\\');
                    parts.last_mut().expect("one part").push(n);
                }
                Some(n) if n == sep => parts.last_mut().expect("one part").push(n),
                Some(n) => {
                    parts.last_mut().expect("one part").push('\\');
                    parts.last_mut().expect("one part").push(n);
                }
                None => parts.last_mut().expect("one part").push('\\'),
            }
        } else if c == sep {
            parts.push(String::new());
        } else {
            parts.last_mut().expect("one part").push(c);
        }
    }
    parts
}

fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn token(value: &str) -> Result<TokenValue, EhrError> {
    let parts = split_escaped(value, '|');
    let bad = || EhrError::BadParameter {
        name: "identifier",
        message: "expected value, system|value, |value or system|".into(),
    };
    match parts.as_slice() {
        [code] if !code.is_empty() => Ok(TokenValue {
            system: TokenMatch::Any,
            code: TokenMatch::Exactly(unescape(code)),
        }),
        [system, code] => {
            if system.is_empty() && code.is_empty() {
                return Err(bad());
            }
            let code = if code.is_empty() {
                TokenMatch::Any
            } else {
                TokenMatch::Exactly(unescape(code))
            };
            Ok(TokenValue {
                system: TokenMatch::Exactly(unescape(system)),
                code,
            })
        }
        _ => Err(bad()),
    }
}

impl Criteria {
    /// Parses `name=value` pairs. Unsupported parameters are refused, never ignored: a
    /// condition silently ignored would match the wrong resource.
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, EhrError> {
        let mut criteria = Criteria::default();
        for (name, value) in pairs {
            if value.chars().any(char::is_control) {
                return Err(EhrError::BadParameter {
                    name: "search",
                    message: "search values may not contain control characters".into(),
                });
            }
            match name.as_str() {
                "_id" => {
                    let ids: Vec<String> = split_escaped(value, ',')
                        .iter()
                        .map(|s| unescape(s))
                        .collect();
                    if ids.iter().any(|id| !crate::resource::is_valid_id(id)) {
                        return Err(EhrError::BadParameter {
                            name: "_id",
                            message: "not a valid FHIR id".into(),
                        });
                    }
                    criteria.ids = Some(match criteria.ids.take() {
                        None => ids,
                        Some(previous) => {
                            previous.into_iter().filter(|id| ids.contains(id)).collect()
                        }
                    });
                }
                "identifier" => {
                    let alternatives = split_escaped(value, ',')
                        .iter()
                        .map(|v| token(v))
                        .collect::<Result<Vec<_>, _>>()?;
                    criteria.identifiers.push(alternatives);
                }
                other => {
                    return Err(EhrError::UnsupportedCriteria {
                        parameter: other.chars().take(64).collect(),
                    });
                }
            }
        }
        Ok(criteria)
    }

    /// Parses an `If-None-Exist` header value (a query string without `?`).
    pub fn parse_query(query: &str) -> Result<Self, EhrError> {
        let query = query.trim_start_matches('?');
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        if pairs.is_empty() {
            return Err(EhrError::BadParameter {
                name: "If-None-Exist",
                message: "the condition is empty".into(),
            });
        }
        Self::parse(&pairs)
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_none() && self.identifiers.is_empty()
    }

    /// A stable 64-bit key for serialising writers with the same condition (FNV-1a).
    pub fn lock_key(&self, rt: ResourceType) -> i64 {
        let text = format!("{rt}?{self:?}");
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in text.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        i64::from_ne_bytes(hash.to_ne_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exactly(s: &str) -> TokenMatch {
        TokenMatch::Exactly(s.into())
    }

    #[test]
    fn token_forms_follow_the_spec() {
        let c = Criteria::parse_query("identifier=http://a|1,|2,sys|,3").unwrap();
        assert_eq!(
            c.identifiers,
            vec![vec![
                TokenValue {
                    system: exactly("http://a"),
                    code: exactly("1")
                },
                TokenValue {
                    system: exactly(""),
                    code: exactly("2")
                },
                TokenValue {
                    system: exactly("sys"),
                    code: TokenMatch::Any
                },
                TokenValue {
                    system: TokenMatch::Any,
                    code: exactly("3")
                },
            ]]
        );
    }

    #[test]
    fn escaped_separators_stay_in_the_value() {
        let c = Criteria::parse_query("identifier=a\\|b|c\\,d").unwrap();
        assert_eq!(
            c.identifiers,
            vec![vec![TokenValue {
                system: exactly("a|b"),
                code: exactly("c,d")
            }]]
        );
    }

    #[test]
    fn repeated_ids_intersect_and_bad_input_is_refused() {
        let c = Criteria::parse_query("_id=a,b&_id=b,c").unwrap();
        assert_eq!(c.ids, Some(vec!["b".to_string()]));
        assert!(Criteria::parse_query("name=x").is_err());
        assert!(Criteria::parse_query("").is_err());
        assert!(Criteria::parse_query("identifier=|").is_err());
        assert!(Criteria::parse_query("_id=a/b").is_err());
        assert!(Criteria::parse_query("identifier=%00").is_err());
    }
}
