//! The criteria of conditional interactions (If-None-Exist, conditional update, patch and
//! delete, and `Type?criteria` Bundle entries): a full search, checked strictly — a condition
//! silently ignored would match the wrong resource.

use crate::{
    definitions::ResourceType,
    error::EhrError,
    search::query::{RESULT_PARAMETERS, SearchRequest},
};

/// Parsed criteria on one resource type.
#[derive(Debug)]
pub struct Criteria {
    pub request: SearchRequest,
    /// The query in a canonical order, for the lock key.
    canonical: String,
}

impl Criteria {
    /// Parses `name=value` pairs for a search on `rt`. Unknown parameters and result
    /// parameters (`_sort`, `_count`, …) are refused; at least one condition is needed.
    pub fn parse(rt: ResourceType, pairs: &[(String, String)]) -> Result<Self, EhrError> {
        if let Some((name, _)) = pairs
            .iter()
            .find(|(k, _)| RESULT_PARAMETERS.contains(&k.as_str()))
        {
            return Err(EhrError::BadParameter {
                name: "criteria",
                message: format!(
                    "{name} does not select resources; a condition takes search parameters only"
                ),
            });
        }
        if pairs.is_empty() {
            return Err(EhrError::BadParameter {
                name: "criteria",
                message: "the condition is empty".into(),
            });
        }
        let request = SearchRequest::parse(rt, pairs, true)?;
        let mut sorted: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        sorted.sort();
        Ok(Criteria {
            request,
            canonical: format!("{rt}?{}", sorted.join("&")),
        })
    }

    /// Parses a query string (an `If-None-Exist` value, the query of a Bundle entry's URL).
    pub fn parse_query(rt: ResourceType, query: &str) -> Result<Self, EhrError> {
        let query = query.trim_start_matches('?');
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        Self::parse(rt, &pairs)
    }

    pub fn resource_type(&self) -> ResourceType {
        self.request.resource_type
    }

    /// A stable 64-bit key for serialising writers with the same condition (FNV-1a).
    pub fn lock_key(&self) -> i64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.canonical.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        i64::from_ne_bytes(hash.to_ne_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definitions::Definitions;

    fn pairs(q: &str) -> Vec<(String, String)> {
        form_urlencoded::parse(q.as_bytes()).into_owned().collect()
    }

    #[test]
    fn conditions_are_strict_and_keyed_independently_of_order() {
        let patient = Definitions::r4().resource_type("Patient").unwrap();
        let a = Criteria::parse(patient, &pairs("identifier=a|1&name=x")).unwrap();
        let b = Criteria::parse(patient, &pairs("name=x&identifier=a|1")).unwrap();
        assert_eq!(a.lock_key(), b.lock_key());
        assert_ne!(
            a.lock_key(),
            Criteria::parse(patient, &pairs("name=y"))
                .unwrap()
                .lock_key()
        );
        for bad in ["nickname=x", "_count=1", "", "birthdate=soon", "name=a%00b"] {
            assert!(Criteria::parse(patient, &pairs(bad)).is_err(), "{bad}");
        }
    }
}
