//! The city's records, generated deterministically for the search benchmark (issue 4): patient
//! `k` and the observations of patient `k` are the same on every run and every machine, so the
//! query scenarios know which ids, names, codes and dates exist without asking the server.
//!
//! - Patients `city-p000000` … : Vietnamese names with diacritics (surnames in roughly their
//!   national frequencies, so `name=nguyen` matches about a third of the city), personal ID
//!   and health-insurance number, phone, birth date, a ward of Cao Lãnh.
//! - Observations `city-o000000-0` … : LOINC vital signs of that patient (heart rate,
//!   temperature, weight, height, respiratory rate, SpO2, BMI, blood pressure with components),
//!   dated over 2025-01-01 … 2026-11-23 at minute precision, values in UCUM units.

use serde_json::{Value, json};

/// splitmix64: a fixed, well-mixed function of its input (no state, no seed to forget).
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn pick<T: Copy>(items: &[T], seed: u64) -> T {
    items[(seed % items.len() as u64) as usize]
}

/// Surnames with their approximate share of the population, in per mille.
pub const FAMILIES: &[(&str, u64)] = &[
    ("Nguyễn", 380),
    ("Trần", 110),
    ("Lê", 95),
    ("Phạm", 70),
    ("Huỳnh", 51),
    ("Phan", 45),
    ("Võ", 39),
    ("Đặng", 21),
    ("Bùi", 20),
    ("Đỗ", 14),
    ("Hồ", 13),
    ("Ngô", 13),
    ("Dương", 10),
    ("Lý", 5),
    ("Trương", 30),
    ("Đinh", 20),
    ("Lâm", 20),
    ("Châu", 15),
    ("Mai", 14),
    ("Tô", 11),
];

const MIDDLE_FEMALE: &[&str] = &["Thị", "Ngọc", "Thị Thu", "Kim", "Thanh", "Mỹ"];
const MIDDLE_MALE: &[&str] = &["Văn", "Hữu", "Minh", "Quốc", "Thành", "Đức"];
const GIVEN_FEMALE: &[&str] = &[
    "Lan",
    "Hoa",
    "Thảo",
    "Ngọc",
    "Hương",
    "Trang",
    "Linh",
    "Mai",
    "Yến",
    "Nhung",
    "Phượng",
    "Tuyết",
    "Hằng",
    "Diễm",
    "Oanh",
    "Xuân",
];
const GIVEN_MALE: &[&str] = &[
    "An", "Bình", "Dũng", "Hùng", "Minh", "Tuấn", "Phúc", "Khang", "Long", "Nam", "Sơn", "Tài",
    "Thắng", "Đạt", "Quang", "Vinh",
];
/// Wards of the Cao Lãnh area (codes from the administrative-unit reference).
pub const WARDS: &[(&str, &str)] = &[
    ("29869", "Phường Cao Lãnh"),
    ("29884", "Phường Mỹ Ngãi"),
    ("29888", "Phường Mỹ Trà"),
];
const STREETS: &[&str] = &[
    "Lê Lợi",
    "Nguyễn Huệ",
    "Tôn Đức Thắng",
    "Đường 30/4",
    "Lý Thường Kiệt",
    "Phạm Hữu Lầu",
];

/// A LOINC vital sign: code, display, UCUM unit, low and high value, decimals.
#[derive(Debug, Clone, Copy)]
pub struct Vital {
    pub code: &'static str,
    pub display: &'static str,
    pub unit: &'static str,
    low: f64,
    high: f64,
    decimals: usize,
}

pub const VITALS: &[Vital] = &[
    Vital {
        code: "8867-4",
        display: "Heart rate",
        unit: "/min",
        low: 50.0,
        high: 120.0,
        decimals: 0,
    },
    Vital {
        code: "8310-5",
        display: "Body temperature",
        unit: "Cel",
        low: 35.8,
        high: 39.5,
        decimals: 1,
    },
    Vital {
        code: "29463-7",
        display: "Body weight",
        unit: "kg",
        low: 3.0,
        high: 95.0,
        decimals: 1,
    },
    Vital {
        code: "8302-2",
        display: "Body height",
        unit: "cm",
        low: 50.0,
        high: 185.0,
        decimals: 0,
    },
    Vital {
        code: "9279-1",
        display: "Respiratory rate",
        unit: "/min",
        low: 12.0,
        high: 30.0,
        decimals: 0,
    },
    Vital {
        code: "2708-6",
        display: "Oxygen saturation in Arterial blood",
        unit: "%",
        low: 88.0,
        high: 100.0,
        decimals: 0,
    },
    Vital {
        code: "39156-5",
        display: "Body mass index (BMI) [Ratio]",
        unit: "kg/m2",
        low: 15.0,
        high: 35.0,
        decimals: 1,
    },
    Vital {
        code: "85354-9",
        display: "Blood pressure panel with all children optional",
        unit: "",
        low: 0.0,
        high: 0.0,
        decimals: 0,
    },
];

pub const LOINC: &str = "http://loinc.org";

pub fn patient_id(k: u64) -> String {
    format!("city-p{k:06}")
}

pub fn observation_id(k: u64, j: u64) -> String {
    format!("city-o{k:06}-{j}")
}

/// Patient `k`'s surname (the weighted table above).
pub fn family(k: u64) -> &'static str {
    let total: u64 = FAMILIES.iter().map(|(_, w)| w).sum();
    let mut r = mix(k ^ 0xFA) % total;
    for (name, weight) in FAMILIES {
        if r < *weight {
            return name;
        }
        r -= weight;
    }
    FAMILIES[0].0
}

pub fn patient(k: u64) -> Value {
    let h = mix(k);
    let female = h.is_multiple_of(2);
    let (middle, given) = if female {
        (pick(MIDDLE_FEMALE, h >> 8), pick(GIVEN_FEMALE, h >> 16))
    } else {
        (pick(MIDDLE_MALE, h >> 8), pick(GIVEN_MALE, h >> 16))
    };
    let family = family(k);
    let (ward_code, ward) = pick(WARDS, h >> 24);
    let year = 1935 + (h >> 32) % 90;
    json!({
        "resourceType": "Patient",
        "id": patient_id(k),
        "identifier": [
            {"system": "http://fhir.ehealth.gov.vn/core/sid/national_id", "value": format!("0870{k:08}")},
            {"system": "http://fhir.ehealth.gov.vn/core/sid/insurance_number", "value": format!("GD48287{k:08}")}
        ],
        "active": true,
        "name": [{"use": "official", "text": format!("{family} {middle} {given}"), "family": family, "given": [middle, given]}],
        "telecom": [{"system": "phone", "value": format!("09{:08}", h % 100_000_000), "use": "mobile"}],
        "gender": if female { "female" } else { "male" },
        "birthDate": format!("{year}-{:02}-{:02}", 1 + (h >> 40) % 12, 1 + (h >> 44) % 28),
        "address": [{"use": "home", "line": [format!("{} {}", 1 + (h >> 48) % 300, pick(STREETS, h >> 52))],
                     "city": ward, "district": "Cao Lãnh", "state": "Đồng Tháp", "country": "VN",
                     "extension": [{"url": "http://fhir.sen.vn/StructureDefinition/sen-vn-address-ward", "valueCode": ward_code}]}]
    })
}

/// Days from 2025-01-01 covered by observation dates (to 2026-11-23).
pub const OBSERVATION_DAYS: u64 = 692;

/// The date (`YYYY-MM-DD`) `day` days after 2025-01-01.
pub fn day_date(day: u64) -> String {
    let date = time::Date::from_calendar_date(2025, time::Month::January, 1)
        .expect("valid date")
        .saturating_add(time::Duration::days(day as i64));
    format!(
        "{}-{:02}-{:02}",
        date.year(),
        date.month() as u8,
        date.day()
    )
}

/// The vital sign observation `j` of patient `k` records.
pub fn vital(k: u64, j: u64) -> Vital {
    pick(VITALS, mix(k.wrapping_mul(31).wrapping_add(j)) >> 3)
}

fn value(v: &Vital, seed: u64) -> Value {
    let span = v.high - v.low;
    let x = v.low + span * ((seed % 10_000) as f64 / 10_000.0);
    let text = format!("{x:.*}", v.decimals);
    // The decimal as written (serde_json would print the shortest float form).
    serde_json::from_str(&text).expect("a number")
}

fn quantity(v: &Vital, seed: u64) -> Value {
    json!({"value": value(v, seed), "unit": v.unit, "system": "http://unitsofmeasure.org", "code": v.unit})
}

pub fn observation(k: u64, j: u64) -> Value {
    let h = mix(k.wrapping_mul(31).wrapping_add(j) ^ 0x0B5);
    let v = vital(k, j);
    let day = h % OBSERVATION_DAYS;
    let minute = (h >> 16) % (11 * 60);
    let effective = format!(
        "{}T{:02}:{:02}:00+07:00",
        day_date(day),
        7 + minute / 60,
        minute % 60
    );
    let mut body = json!({
        "resourceType": "Observation",
        "id": observation_id(k, j),
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs", "display": "Vital Signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": v.code, "display": v.display}]},
        "subject": {"reference": format!("Patient/{}", patient_id(k))},
        "effectiveDateTime": effective,
    });
    if v.code == "85354-9" {
        let systolic = Vital {
            code: "8480-6",
            display: "Systolic blood pressure",
            unit: "mm[Hg]",
            low: 95.0,
            high: 170.0,
            decimals: 0,
        };
        let diastolic = Vital {
            code: "8462-4",
            display: "Diastolic blood pressure",
            unit: "mm[Hg]",
            low: 55.0,
            high: 105.0,
            decimals: 0,
        };
        body["component"] = json!([
            {"code": {"coding": [{"system": LOINC, "code": systolic.code, "display": systolic.display}]}, "valueQuantity": quantity(&systolic, h >> 24)},
            {"code": {"coding": [{"system": LOINC, "code": diastolic.code, "display": diastolic.display}]}, "valueQuantity": quantity(&diastolic, h >> 40)}
        ]);
    } else {
        body["valueQuantity"] = quantity(&v, h >> 24);
    }
    body
}

/// A transaction Bundle writing `resources` with PUT under their own ids.
pub fn transaction(resources: &[Value]) -> String {
    let entries: Vec<Value> = resources
        .iter()
        .map(|r| {
            let url = format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap_or_default(),
                r["id"].as_str().unwrap_or_default()
            );
            json!({"resource": r, "request": {"method": "PUT", "url": url}})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}).to_string()
}

/// Bundle `b` of the load: the patients first (`size` per Bundle), then their observations
/// (`size` per Bundle, `per_patient` per patient). None past the end.
pub fn bundle(b: u64, patients: u64, per_patient: u64, size: u64) -> Option<String> {
    let patient_bundles = patients.div_ceil(size);
    let resources: Vec<Value> = if b < patient_bundles {
        (b * size..((b + 1) * size).min(patients))
            .map(patient)
            .collect()
    } else {
        let first = (b - patient_bundles) * size;
        let last = ((b - patient_bundles + 1) * size).min(patients * per_patient);
        if first >= last {
            return None;
        }
        (first..last)
            .map(|n| observation(n / per_patient, n % per_patient))
            .collect()
    };
    Some(transaction(&resources))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_input_same_records() {
        assert_eq!(patient(42), patient(42));
        assert_eq!(observation(42, 3), observation(42, 3));
        assert_ne!(patient(42)["name"], patient(43)["name"]);
    }

    #[test]
    fn surnames_follow_their_weights() {
        let nguyen = (0..10_000).filter(|k| family(*k) == "Nguyễn").count();
        assert!((3_500..4_100).contains(&nguyen), "{nguyen}");
    }

    #[test]
    fn bundles_cover_every_record_once() {
        let mut ids = std::collections::HashSet::new();
        let mut b = 0;
        while let Some(bundle) = bundle(b, 25, 3, 10) {
            let bundle: Value = serde_json::from_str(&bundle).unwrap();
            for entry in bundle["entry"].as_array().unwrap() {
                assert!(ids.insert(entry["request"]["url"].as_str().unwrap().to_string()));
            }
            b += 1;
        }
        assert_eq!(ids.len(), 25 + 75);
        assert_eq!(day_date(0), "2025-01-01");
        assert_eq!(day_date(OBSERVATION_DAYS - 1), "2026-11-23");
    }
}
