//! Load scenarios for Sen's FHIR API (goose). Run through `loadtests/run.sh`, which starts the
//! server on each backend, runs each scenario and records the figures in RESULTS.md.
//!
//! Scenarios (select with `--scenarios`):
//! - `read`:   GET /fhir/Patient/{id} on one of the seeded patients
//! - `create`: POST /fhir/Patient with a new Vietnamese patient
//! - `update`: PUT /fhir/Patient/{id} on one of the seeded patients (no If-Match)
//! - `transaction`: POST /fhir with a transaction Bundle of 100 entries: 20 patients, each with
//!   an encounter and three vital-sign observations referring to them by urn:uuid
//! - `search`: GET /fhir/Patient?name=<a family name without diacritics>&_count=20, and
//!   GET /fhir/Patient?identifier=<system>|<personal ID> on the seeded patients
//!
//! - `city-subject-code`, `city-name`, `city-code-date`, `city-include`, `city-total`: issue 4's
//!   query mix over the deterministic city that `sen-citygen` loads (`SEN_CITY_PATIENTS`,
//!   default 100,000): a patient's observations of one code; patients by a name prefix typed
//!   with or without diacritics; one code since a date, 20 per page; the same with
//!   `_include=Observation:subject`; the accurate count of one code's observations.
//!
//! `test_start` seeds `SEN_LOAD_PATIENTS` patients (default 1,000) with PUT under fixed ids, so
//! reads and updates always hit existing resources.

use goose::prelude::*;
use rand::Rng;
use sen_loadtests::city;
use serde_json::json;

fn seeded() -> usize {
    std::env::var("SEN_LOAD_PATIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

const FAMILIES: &[&str] = &[
    "Nguyễn", "Trần", "Lê", "Phạm", "Huỳnh", "Võ", "Đặng", "Bùi", "Đỗ", "Dương",
];
const GIVEN: &[&str] = &[
    "An", "Bình", "Châu", "Dũng", "Hoa", "Hùng", "Lan", "Minh", "Ngọc", "Thảo",
];
const WARDS: &[(&str, &str)] = &[
    ("29869", "Phường Cao Lãnh"),
    ("29884", "Phường Mỹ Ngãi"),
    ("29888", "Phường Mỹ Trà"),
];

/// A patient as a ward health station would register one.
fn patient(n: usize, id: Option<&str>) -> String {
    let (ward_code, ward) = WARDS[n % WARDS.len()];
    let mut body = json!({
        "resourceType": "Patient",
        "identifier": [
            {"system": "http://fhir.ehealth.gov.vn/core/sid/national_id", "value": format!("0870{:08}", n % 100_000_000)},
            {"system": "http://fhir.ehealth.gov.vn/core/sid/insurance_number", "value": format!("GD48287{:08}", n % 100_000_000)}
        ],
        "active": true,
        "name": [{"use": "official", "family": FAMILIES[n % FAMILIES.len()], "given": [GIVEN[(n / 10) % GIVEN.len()], GIVEN[(n / 100) % GIVEN.len()]]}],
        "telecom": [{"system": "phone", "value": format!("09{:08}", n % 100_000_000), "use": "mobile"}],
        "gender": if n.is_multiple_of(2) { "female" } else { "male" },
        "birthDate": format!("{}-{:02}-{:02}", 1940 + n % 80, 1 + n % 12, 1 + n % 28),
        "address": [{"use": "home", "line": [format!("{} đường Lê Lợi", 1 + n % 300)], "city": ward, "state": "Đồng Tháp", "country": "VN",
                     "extension": [{"url": "http://fhir.ehealth.gov.vn/core/StructureDefinition/ward-code", "valueCode": ward_code}]}]
    });
    if let Some(id) = id {
        body["id"] = json!(id);
    }
    body.to_string()
}

async fn send(
    user: &mut GooseUser,
    method: GooseMethod,
    path: &str,
    name: &str,
    body: String,
) -> TransactionResult {
    let builder = user
        .get_request_builder(&method, path)?
        .header("content-type", "application/fhir+json")
        .header("authorization", sen_loadtests::authorization())
        .body(body);
    let request = GooseRequest::builder()
        .method(method)
        .path(path)
        .name(name)
        .set_request_builder(builder)
        .build();
    user.request(request).await?;
    Ok(())
}

async fn get(user: &mut GooseUser, path: &str, name: &str) -> TransactionResult {
    let builder = user
        .get_request_builder(&GooseMethod::Get, path)?
        .header("authorization", sen_loadtests::authorization());
    let request = GooseRequest::builder()
        .path(path)
        .name(name)
        .set_request_builder(builder)
        .build();
    user.request(request).await?;
    Ok(())
}

async fn seed(user: &mut GooseUser) -> TransactionResult {
    for n in 0..seeded() {
        let id = format!("load-{n}");
        send(
            user,
            GooseMethod::Put,
            &format!("/fhir/Patient/{id}"),
            "seed",
            patient(n, Some(&id)),
        )
        .await?;
    }
    Ok(())
}

async fn read(user: &mut GooseUser) -> TransactionResult {
    let n = rand::rng().random_range(0..seeded());
    let path = format!("/fhir/Patient/load-{n}");
    get(user, &path, "read Patient").await
}

/// Families as a clerk types them: no diacritics, lower case.
const FOLDED_FAMILIES: &[&str] = &[
    "nguyen", "tran", "le", "pham", "huynh", "vo", "dang", "bui", "do", "duong",
];

async fn search_name(user: &mut GooseUser) -> TransactionResult {
    let family = FOLDED_FAMILIES[rand::rng().random_range(0..FOLDED_FAMILIES.len())];
    let path = format!("/fhir/Patient?name={family}&_count=20");
    get(user, &path, "search Patient by name").await
}

async fn search_identifier(user: &mut GooseUser) -> TransactionResult {
    let n = rand::rng().random_range(0..seeded());
    let path = format!(
        "/fhir/Patient?identifier=http://fhir.ehealth.gov.vn/core/sid/national_id|0870{n:08}"
    );
    get(user, &path, "search Patient by identifier").await
}

async fn create(user: &mut GooseUser) -> TransactionResult {
    let n = rand::rng().random_range(0..100_000_000);
    send(
        user,
        GooseMethod::Post,
        "/fhir/Patient",
        "create Patient",
        patient(n, None),
    )
    .await
}

/// A typical update: same person and identifiers, new phone number and address.
async fn update(user: &mut GooseUser) -> TransactionResult {
    let n = rand::rng().random_range(0..seeded());
    let id = format!("load-{n}");
    let mut body: serde_json::Value =
        serde_json::from_str(&patient(n, Some(&id))).expect("valid JSON");
    let moved = rand::rng().random_range(0..1_000_000u32);
    body["telecom"][0]["value"] = json!(format!("09{moved:08}"));
    body["address"][0]["line"][0] = json!(format!("{} đường Nguyễn Huệ", moved % 500));
    let body = body.to_string();
    send(
        user,
        GooseMethod::Put,
        &format!("/fhir/Patient/{id}"),
        "update Patient",
        body,
    )
    .await
}

/// A clinic's upload: 20 patients, each with a remote-consultation Encounter and three vital
/// signs, linked by urn:uuid references (100 entries).
fn transaction_bundle() -> String {
    let mut rng = rand::rng();
    let mut entries = Vec::with_capacity(100);
    for _ in 0..20 {
        let n = rng.random_range(0..100_000_000);
        let (p, e) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        entries.push(format!(
            r#"{{"fullUrl":"urn:uuid:{p}","resource":{},"request":{{"method":"POST","url":"Patient"}}}}"#,
            patient(n, None)
        ));
        entries.push(format!(
            r#"{{"fullUrl":"urn:uuid:{e}","resource":{{"resourceType":"Encounter","status":"finished","class":{{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"VR"}},"subject":{{"reference":"urn:uuid:{p}"}},"period":{{"start":"2026-11-26T08:00:00+07:00","end":"2026-11-26T08:15:00+07:00"}}}},"request":{{"method":"POST","url":"Encounter"}}}}"#
        ));
        for (code, display, value, unit) in [
            ("8867-4", "Heart rate", "72", "/min"),
            ("8310-5", "Body temperature", "36.60", "Cel"),
            ("29463-7", "Body weight", "58.40", "kg"),
        ] {
            entries.push(format!(
                r#"{{"resource":{{"resourceType":"Observation","status":"final","code":{{"coding":[{{"system":"http://loinc.org","code":"{code}","display":"{display}"}}]}},"subject":{{"reference":"urn:uuid:{p}"}},"encounter":{{"reference":"urn:uuid:{e}"}},"effectiveDateTime":"2026-11-26T08:05:00+07:00","valueQuantity":{{"value":{value},"unit":"{unit}","system":"http://unitsofmeasure.org","code":"{unit}"}}}},"request":{{"method":"POST","url":"Observation"}}}}"#
            ));
        }
    }
    format!(
        r#"{{"resourceType":"Bundle","type":"transaction","entry":[{}]}}"#,
        entries.join(",")
    )
}

async fn transaction(user: &mut GooseUser) -> TransactionResult {
    send(
        user,
        GooseMethod::Post,
        "/fhir",
        "transaction of 100",
        transaction_bundle(),
    )
    .await
}

fn city_patients() -> u64 {
    std::env::var("SEN_CITY_PATIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// A code one of the city's observations has (not the panel: its values are in components).
fn city_code() -> &'static str {
    city::VITALS[rand::rng().random_range(0..city::VITALS.len() - 1)].code
}

fn city_since() -> String {
    city::day_date(rand::rng().random_range(0..city::OBSERVATION_DAYS))
}

async fn city_subject_code(user: &mut GooseUser) -> TransactionResult {
    let k = rand::rng().random_range(0..city_patients());
    let j = rand::rng().random_range(0..10);
    let path = format!(
        "/fhir/Observation?subject=Patient/{}&code={}|{}",
        city::patient_id(k),
        city::LOINC,
        city::vital(k, j).code
    );
    get(user, &path, "Observation?subject&code").await
}

/// Name prefixes as clerks type them: folded or with diacritics, surnames and given names.
const CITY_NAMES: &[&str] = &[
    "nguyen", "Nguyễn", "tran", "Trần", "le", "pham", "Phạm", "huynh", "phan", "vo", "dang",
    "Đặng", "duong", "bui", "ngo", "truong", "lan", "Thảo", "hung", "minh", "ngoc", "dũng", "nguy",
    "tr", "phuo",
];

async fn city_name(user: &mut GooseUser) -> TransactionResult {
    let name = CITY_NAMES[rand::rng().random_range(0..CITY_NAMES.len())];
    get(user, &format!("/fhir/Patient?name={name}"), "Patient?name").await
}

/// One code's observations since a date, 20 per page, with `extra` parameters.
fn city_code_since(extra: &str) -> String {
    format!(
        "/fhir/Observation?code={}|{}&date=ge{}&_count=20{extra}",
        city::LOINC,
        city_code(),
        city_since()
    )
}

async fn city_code_date(user: &mut GooseUser) -> TransactionResult {
    let path = city_code_since("");
    get(user, &path, "Observation?code&date=ge&_count=20").await
}

async fn city_include(user: &mut GooseUser) -> TransactionResult {
    let path = city_code_since("&_include=Observation:subject");
    get(user, &path, "Observation?code&date&_include=subject").await
}

async fn city_total(user: &mut GooseUser) -> TransactionResult {
    let path = format!(
        "/fhir/Observation?code={}|{}&_total=accurate&_count=1",
        city::LOINC,
        city_code()
    );
    get(user, &path, "Observation?code&_total=accurate").await
}

#[tokio::main]
async fn main() -> Result<(), GooseError> {
    GooseAttack::initialize()?
        .test_start(transaction!(seed))
        .register_scenario(scenario!("read").register_transaction(transaction!(read)))
        .register_scenario(scenario!("create").register_transaction(transaction!(create)))
        .register_scenario(scenario!("update").register_transaction(transaction!(update)))
        .register_scenario(scenario!("transaction").register_transaction(transaction!(transaction)))
        .register_scenario(
            scenario!("search")
                .register_transaction(transaction!(search_name))
                .register_transaction(transaction!(search_identifier)),
        )
        .register_scenario(
            scenario!("city-subject-code").register_transaction(transaction!(city_subject_code)),
        )
        .register_scenario(scenario!("city-name").register_transaction(transaction!(city_name)))
        .register_scenario(
            scenario!("city-code-date").register_transaction(transaction!(city_code_date)),
        )
        .register_scenario(
            scenario!("city-include").register_transaction(transaction!(city_include)),
        )
        .register_scenario(scenario!("city-total").register_transaction(transaction!(city_total)))
        .set_default(GooseDefault::Host, "http://127.0.0.1:8080")?
        .execute()
        .await?;
    Ok(())
}
