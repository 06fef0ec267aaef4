//! Formats of the R4 primitive types, checked on the JSON value as sent (the regular
//! expressions of the specification, written out by hand).

use serde_json::Value;

fn digits(s: &str, n: usize) -> Option<u32> {
    (s.len() == n && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// `YYYY`, `YYYY-MM` or `YYYY-MM-DD`; answers how many parts there were.
fn date(s: &str) -> Result<usize, ()> {
    let parts: Vec<&str> = s.split('-').collect();
    let year = parts.first().and_then(|y| digits(y, 4)).ok_or(())?;
    if year == 0 || parts.len() > 3 {
        return Err(());
    }
    if let Some(month) = parts.get(1) {
        let month = digits(month, 2).ok_or(())?;
        if !(1..=12).contains(&month) {
            return Err(());
        }
    }
    if let Some(day) = parts.get(2) {
        let day = digits(day, 2).ok_or(())?;
        if !(1..=31).contains(&day) {
            return Err(());
        }
    }
    Ok(parts.len())
}

/// `hh:mm:ss` with an optional fraction.
fn time(s: &str) -> Result<(), ()> {
    let (main, fraction) = s.split_once('.').map_or((s, None), |(m, f)| (m, Some(f)));
    if fraction.is_some_and(|f| f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit())) {
        return Err(());
    }
    let parts: Vec<&str> = main.split(':').collect();
    let [h, m, sec] = parts.as_slice() else {
        return Err(());
    };
    let (h, m, sec) = (
        digits(h, 2).ok_or(())?,
        digits(m, 2).ok_or(())?,
        digits(sec, 2).ok_or(())?,
    );
    if h > 23 || m > 59 || sec > 60 {
        return Err(());
    }
    Ok(())
}

/// `Z`, `+hh:mm` or `-hh:mm` (up to 14:00).
fn zone(s: &str) -> Result<(), ()> {
    if s == "Z" {
        return Ok(());
    }
    let rest = s.strip_prefix(['+', '-']).ok_or(())?;
    let (h, m) = rest.split_once(':').ok_or(())?;
    let (h, m) = (digits(h, 2).ok_or(())?, digits(m, 2).ok_or(())?);
    if h > 14 || m > 59 || (h == 14 && m != 0) {
        return Err(());
    }
    Ok(())
}

/// A dateTime: a date, or a full date with a time and a zone. With `instant`, the time and
/// zone are required.
fn date_time(s: &str, instant: bool) -> Result<(), ()> {
    let Some((day, rest)) = s.split_once('T') else {
        return if instant { Err(()) } else { date(s).map(drop) };
    };
    if date(day)? != 3 {
        return Err(());
    }
    let split = rest.find(['Z', '+', '-']).ok_or(())?;
    time(&rest[..split])?;
    zone(&rest[split..])
}

fn string(value: &Value) -> Result<&str, String> {
    match value.as_str() {
        Some("") => Err("an empty string is not a value; leave the element out".into()),
        Some(s) => Ok(s),
        None => Err("expected a JSON string".into()),
    }
}

/// Checks `value` against the primitive type `code` (`System.*` codes are FHIRPath types).
pub fn check(code: &str, value: &Value) -> Result<(), String> {
    let bad = |what: &str| Err(what.to_string());
    match code {
        "boolean" | "System.Boolean" => value
            .is_boolean()
            .then_some(())
            .ok_or_else(|| "expected true or false".into()),
        "integer" | "System.Integer" => match value.as_i64() {
            Some(n) if i32::try_from(n).is_ok() => Ok(()),
            _ => bad("expected a whole number (32-bit, no decimal point)"),
        },
        "positiveInt" => match value.as_i64() {
            Some(n) if n >= 1 && i32::try_from(n).is_ok() => Ok(()),
            _ => bad("expected a whole number of 1 or more"),
        },
        "unsignedInt" => match value.as_i64() {
            Some(n) if n >= 0 && i32::try_from(n).is_ok() => Ok(()),
            _ => bad("expected a whole number of 0 or more"),
        },
        "decimal" | "System.Decimal" => value
            .is_number()
            .then_some(())
            .ok_or_else(|| "expected a JSON number".into()),
        "string" | "markdown" | "xhtml" | "System.String" => string(value).map(drop),
        "code" => {
            let s = string(value)?;
            if s.trim() != s || s.contains("  ") || s.contains(['\t', '\n', '\r']) {
                return bad("a code has no leading, trailing or repeated whitespace");
            }
            Ok(())
        }
        "id" => {
            let s = string(value)?;
            if crate::resource::is_valid_id(s) {
                Ok(())
            } else {
                bad("an id is 1-64 of A-Z, a-z, 0-9, '-', '.'")
            }
        }
        "uri" | "url" | "canonical" => {
            let s = string(value)?;
            if s.chars().any(char::is_whitespace) {
                bad("a URI has no whitespace")
            } else {
                Ok(())
            }
        }
        "oid" => {
            let s = string(value)?;
            let valid = s.strip_prefix("urn:oid:").is_some_and(|rest| {
                let arcs: Vec<&str> = rest.split('.').collect();
                arcs.len() >= 2
                    && matches!(arcs[0], "0" | "1" | "2")
                    && arcs.iter().all(|a| {
                        !a.is_empty()
                            && a.bytes().all(|b| b.is_ascii_digit())
                            && (a.len() == 1 || !a.starts_with('0'))
                    })
            });
            if valid {
                Ok(())
            } else {
                bad("an oid is urn:oid: followed by dotted numbers")
            }
        }
        "uuid" => {
            let s = string(value)?;
            let valid = s.strip_prefix("urn:uuid:").is_some_and(|u| {
                let groups: Vec<&str> = u.split('-').collect();
                groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
                    && groups.iter().all(|g| {
                        g.bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                    })
            });
            if valid {
                Ok(())
            } else {
                bad("a uuid is urn:uuid: followed by a lower-case UUID")
            }
        }
        "date" | "System.Date" => date(string(value)?)
            .map(drop)
            .or_else(|()| bad("expected a date: YYYY, YYYY-MM or YYYY-MM-DD")),
        "dateTime" | "System.DateTime" => date_time(string(value)?, false).or_else(|()| {
            bad("expected a dateTime: a date, or YYYY-MM-DDThh:mm:ss with a zone (Z or +hh:mm)")
        }),
        "instant" => date_time(string(value)?, true)
            .or_else(|()| bad("expected an instant: YYYY-MM-DDThh:mm:ss(.sss) with a zone")),
        "time" | "System.Time" => {
            time(string(value)?).or_else(|()| bad("expected a time: hh:mm:ss"))
        }
        "base64Binary" => {
            let s = string(value)?;
            if s.bytes().all(|b| {
                b.is_ascii_alphanumeric() || b"+/=".contains(&b) || b.is_ascii_whitespace()
            }) {
                Ok(())
            } else {
                bad("expected base64")
            }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::check;

    #[test]
    fn dates_and_times_follow_the_r4_formats() {
        for ok in ["2026", "2026-11", "2026-11-26"] {
            assert!(check("date", &json!(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "26",
            "2026-13",
            "2026-11-32",
            "0000",
            "2026-1-1",
            "2026-11-26T10:00:00Z",
        ] {
            assert!(check("date", &json!(bad)).is_err(), "{bad}");
        }
        for ok in [
            "2026",
            "2026-11-26",
            "2026-11-26T10:00:00Z",
            "2026-11-26T10:00:00.123+07:00",
            "2026-11-26T23:59:60-03:30",
        ] {
            assert!(check("dateTime", &json!(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "2026-11-26T10:00:00",
            "2026-11-26T10:00Z",
            "2026-11T10:00:00Z",
            "2026-11-26T24:00:00Z",
            "2026-11-26T10:00:00+15:00",
        ] {
            assert!(check("dateTime", &json!(bad)).is_err(), "{bad}");
        }
        assert!(check("instant", &json!("2026-11-26T10:00:00.5Z")).is_ok());
        assert!(check("instant", &json!("2026-11-26")).is_err());
        assert!(check("time", &json!("08:30:00")).is_ok());
        assert!(check("time", &json!("8:30")).is_err());
    }

    #[test]
    fn numbers_codes_and_identifiers_follow_the_r4_formats() {
        assert!(check("integer", &json!(5)).is_ok());
        assert!(check("integer", &json!(5.0)).is_err());
        assert!(check("integer", &json!(3_000_000_000_i64)).is_err());
        assert!(check("positiveInt", &json!(0)).is_err());
        assert!(check("unsignedInt", &json!(0)).is_ok());
        assert!(check("decimal", &json!("1.5")).is_err());
        assert!(check("boolean", &json!("true")).is_err());
        assert!(check("code", &json!("final")).is_ok());
        assert!(check("code", &json!(" final")).is_err());
        assert!(check("string", &json!("")).is_err());
        assert!(check("oid", &json!("urn:oid:2.16.840.1.113883")).is_ok());
        assert!(check("oid", &json!("urn:oid:3.1")).is_err());
        assert!(
            check(
                "uuid",
                &json!("urn:uuid:c757873d-ec9a-4326-a141-556f43239520")
            )
            .is_ok()
        );
        assert!(
            check(
                "uuid",
                &json!("urn:uuid:C757873D-EC9A-4326-A141-556F43239520")
            )
            .is_err()
        );
        assert!(check("uri", &json!("http://a b")).is_err());
    }
}
