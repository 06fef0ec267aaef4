//! FHIR search over a small fixture, on both backends: every case's expected ids are written
//! by hand from the R4 search rules, not computed by the server's code.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use sen_platform::Backend;
use serde_json::{Value, json};

use crate::{CCCD, support::TestApp};

on_both_backends!(
    each_search_finds_exactly_what_the_rules_say,
    sorting_paging_includes_and_totals,
    unknown_parameters_are_reported_or_refused,
    reindex_rebuilds_the_index_of_resources_written_before_it,
    compartment_search_stays_inside_the_patient_compartment,
    updates_and_deletes_replace_what_searches_find,
    sorted_pages_keep_their_place_while_others_write,
    a_common_name_pages_through_all_its_patients_once,
);

async fn load(app: &TestApp) {
    let patient = |id: &str,
                   family: &str,
                   given: &[&str],
                   gender: &str,
                   birth: &str,
                   cccd: &str,
                   city: &str| {
        json!({"resourceType": "Patient", "id": id,
            "identifier": [{"system": CCCD, "value": cccd}],
            "name": [{"family": family, "given": given}], "gender": gender, "birthDate": birth,
            "address": [{"city": city, "state": "Đồng Tháp"}]})
    };
    let mut an = patient(
        "p-an",
        "Nguyễn",
        &["Văn", "An"],
        "male",
        "1980-05-01",
        "087080000001",
        "Cao Lãnh",
    );
    an["generalPractitioner"] = json!([{"reference": "Practitioner/d1"}]);
    let hoa = patient(
        "p-hoa",
        "Trần",
        &["Thị", "Hoa"],
        "female",
        "1990-04-30",
        "087090000002",
        "Mỹ Trà",
    );
    let mut duong = patient(
        "p-duong",
        "Đường",
        &["Minh", "Đức"],
        "male",
        "2001",
        "087001000003",
        "Mỹ Ngãi",
    );
    duong["deceasedBoolean"] = json!(true);
    let mut nguyet = patient(
        "p-nguyet",
        "Nguyễn",
        &["Thị", "Nguyệt"],
        "female",
        "1975-12",
        "087075000004",
        "Cao Lãnh",
    );
    nguyet["active"] = json!(false);
    let doctor = json!({"resourceType": "Practitioner", "id": "d1", "name": [{"family": "Lê", "given": ["Bác", "Sĩ"]}]});
    let loinc = |code: &str, display: &str| json!({"coding": [{"system": "http://loinc.org", "code": code, "display": display}]});
    let quantity = |value: f64, code: &str| json!({"value": value, "system": "http://unitsofmeasure.org", "code": code});
    let observation = |id: &str, patient: &str, code: Value, status: &str| {
        json!({"resourceType": "Observation", "id": id, "status": status, "code": code,
            "subject": {"reference": format!("Patient/{patient}")}})
    };
    let mut o1 = observation("o1", "p-an", loinc("8867-4", "Heart rate"), "final");
    o1["effectiveDateTime"] = json!("2026-11-01T08:00:00+07:00");
    o1["valueQuantity"] = quantity(72.0, "/min");
    let mut o2 = observation("o2", "p-an", loinc("8867-4", "Heart rate"), "final");
    o2["effectiveDateTime"] = json!("2026-11-20");
    o2["valueQuantity"] = quantity(110.0, "/min");
    let mut o3 = observation(
        "o3",
        "p-hoa",
        loinc("8480-6", "Systolic blood pressure"),
        "preliminary",
    );
    o3["effectiveDateTime"] = json!("2026-10-15T10:00:00Z");
    o3["valueQuantity"] = quantity(120.0, "mm[Hg]");
    let mut o4 = observation(
        "o4",
        "p-duong",
        loinc("85354-9", "Blood pressure panel"),
        "final",
    );
    o4["effectiveDateTime"] = json!("2025-06");
    o4["component"] = json!([
        {"code": loinc("8480-6", "Systolic blood pressure"), "valueQuantity": quantity(150.0, "mm[Hg]")},
        {"code": loinc("8462-4", "Diastolic blood pressure"), "valueQuantity": quantity(95.0, "mm[Hg]")}]);
    let mut o5 = observation("o5", "p-hoa", loinc("8867-4", "Heart rate"), "final");
    o5["effectivePeriod"] = json!({"start": "2026-11-01", "end": "2026-11-03"});
    o5["valueQuantity"] = quantity(72.5, "/min");
    // A ward's observation: its subject is a Group, not a patient; its temperature is a
    // component. It tells the parameters that repeat others' values (`patient`, `combo-*`)
    // from those they are searched through.
    let ward = json!({"resourceType": "Group", "id": "g-ward", "type": "person", "actual": true});
    let mut o6 = observation(
        "o6",
        "p-hoa",
        loinc("9279-1", "Respiratory rate"),
        "registered",
    );
    o6["subject"] = json!({"reference": "Group/g-ward"});
    o6["component"] = json!([{"code": loinc("8310-5", "Body temperature"), "valueQuantity": quantity(37.5, "Cel")}]);
    let visit = json!({"resourceType": "Encounter", "id": "e1", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/p-an", "identifier": {"system": CCCD, "value": "087080000001"}}});
    let booked = json!({"resourceType": "Appointment", "id": "a1", "status": "booked",
        "start": "2026-12-01T08:00:00+07:00", "end": "2026-12-01T08:30:00+07:00",
        "participant": [{"actor": {"reference": "Patient/p-hoa"}, "status": "accepted"},
            {"actor": {"reference": "Practitioner/d1"}, "status": "accepted"}]});
    for resource in [
        an, hoa, duong, nguyet, doctor, o1, o2, o3, o4, o5, ward, o6, visit, booked,
    ] {
        let path = format!(
            "/fhir/{}/{}",
            resource["resourceType"].as_str().unwrap(),
            resource["id"].as_str().unwrap()
        );
        let response = app.put(&path, &resource).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{path}");
    }
}

async fn search(app: &TestApp, query: &str) -> Value {
    let response = app.get(&format!("/fhir/{query}")).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    body
}

/// The matches of every page of `query`, following the next links to the end.
async fn all_pages(app: &TestApp, query: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut page = search(app, query).await;
    loop {
        seen.extend(ids(&page, "match"));
        let next = page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_string());
        let Some(next) = next else { return seen };
        page = search(app, next.split("/fhir/").nth(1).unwrap()).await;
    }
}

fn ids(bundle: &Value, mode: &str) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["search"]["mode"] == mode)
                .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn each_search_finds_exactly_what_the_rules_say(app: TestApp) {
    load(&app).await;
    let cases: &[(&str, &[&str])] = &[
        // string: prefix, case- and accent-insensitive; :exact; :contains; each name part
        ("Patient?name=nguyen", &["p-an", "p-nguyet"]),
        ("Patient?name=NGUYỄN", &["p-an", "p-nguyet"]),
        ("Patient?family=duong", &["p-duong"]),
        ("Patient?name=đức", &["p-duong"]),
        ("Patient?name:exact=Nguyễn", &["p-an", "p-nguyet"]),
        ("Patient?name:exact=nguyen", &[]),
        ("Patient?name:contains=uye", &["p-an", "p-nguyet"]),
        ("Patient?given=thi", &["p-hoa", "p-nguyet"]),
        ("Patient?address-city=my", &["p-duong", "p-hoa"]),
        // OR with commas, AND by repetition
        ("Patient?name=nguyen,tran", &["p-an", "p-hoa", "p-nguyet"]),
        ("Patient?name=nguyen&gender=female", &["p-nguyet"]),
        ("Patient?given=thi&given=hoa", &["p-hoa"]),
        // token: code, system|code, |code, :not, :missing, booleans
        ("Patient?gender=male", &["p-an", "p-duong"]),
        ("Patient?gender:not=male", &["p-hoa", "p-nguyet"]),
        (
            "Patient?identifier=http://fhir.ehealth.gov.vn/core/sid/national_id|087080000001",
            &["p-an"],
        ),
        ("Patient?identifier=087090000002", &["p-hoa"]),
        ("Patient?identifier=|087090000002", &[]),
        (
            "Patient?identifier=http://fhir.ehealth.gov.vn/core/sid/national_id|",
            &["p-an", "p-duong", "p-hoa", "p-nguyet"],
        ),
        ("Patient?deceased=true", &["p-duong"]),
        ("Patient?active:missing=true", &["p-an", "p-duong", "p-hoa"]),
        ("Patient?active:missing=false", &["p-nguyet"]),
        ("Patient?_id=p-an,p-hoa", &["p-an", "p-hoa"]),
        ("Observation?status=preliminary", &["o3"]),
        (
            "Observation?code=http://loinc.org|8867-4",
            &["o1", "o2", "o5"],
        ),
        ("Observation?code:text=heart", &["o1", "o2", "o5"]),
        // date: precision and every prefix
        ("Patient?birthdate=1990", &["p-hoa"]),
        ("Patient?birthdate=1975", &["p-nguyet"]),
        ("Patient?birthdate=1975-12-15", &[]),
        ("Patient?birthdate=lt1980", &["p-nguyet"]),
        ("Patient?birthdate=ge2001-01-01", &["p-duong"]),
        ("Patient?birthdate=gt1990-04-30", &["p-duong"]),
        ("Patient?birthdate=le1980-05-01", &["p-an", "p-nguyet"]),
        (
            "Patient?birthdate=ne1990-04-30",
            &["p-an", "p-duong", "p-nguyet"],
        ),
        ("Patient?birthdate=eb1980-05-01", &["p-nguyet"]),
        ("Patient?birthdate=sa1990", &["p-duong"]),
        ("Observation?date=2026-11", &["o1", "o2", "o5"]),
        ("Observation?date=2026-11-02", &[]),
        ("Observation?code=8867-4&date=ge2026-11-10", &["o2"]),
        ("Observation?date=2026-11-01", &["o1"]),
        ("Observation?date=lt2026-01-01", &["o4"]),
        // quantity and number precision
        ("Observation?value-quantity=72", &["o1"]),
        ("Observation?value-quantity=72.5", &["o5"]),
        ("Observation?value-quantity=gt100", &["o2", "o3"]),
        (
            "Observation?value-quantity=gt100|http://unitsofmeasure.org|mm[Hg]",
            &["o3"],
        ),
        ("Observation?value-quantity=le72.5||/min", &["o1", "o5"]),
        // composite: both parts in the same component
        (
            "Observation?component-code-value-quantity=http://loinc.org|8480-6$gt140",
            &["o4"],
        ),
        (
            "Observation?component-code-value-quantity=8462-4$gt140",
            &[],
        ),
        (
            "Observation?combo-code-value-quantity=8480-6$lt130",
            &["o3"],
        ),
        // reference: Type/id, id, chains, reverse chains
        ("Observation?subject=Patient/p-an", &["o1", "o2"]),
        ("Observation?patient=p-hoa", &["o3", "o5"]),
        ("Patient?general-practitioner=Practitioner/d1", &["p-an"]),
        ("Observation?subject:Patient.name=tran", &["o3", "o5"]),
        ("Observation?subject.gender=male", &["o1", "o2", "o4"]),
        (
            "Observation?patient.general-practitioner:Practitioner.name=le",
            &["o1", "o2"],
        ),
        ("Patient?_has:Observation:patient:code=8480-6", &["p-hoa"]),
        (
            "Patient?_has:Observation:patient:value-quantity=gt100",
            &["p-an", "p-hoa"],
        ),
        (
            "Practitioner?_has:Patient:general-practitioner:_has:Observation:patient:code=8867-4",
            &["d1"],
        ),
        // parameters searched through others' rows: `combo-*` (the code or a component's),
        // `patient` (`subject` where it is a Patient), Appointment's `patient` and
        // `practitioner` (`actor`), an Encounter's patient known by identifier too
        ("Observation?combo-code=9279-1", &["o6"]),
        ("Observation?combo-code=8310-5", &["o6"]),
        ("Observation?combo-code=8480-6", &["o3", "o4"]),
        ("Observation?combo-code:text=body", &["o6"]),
        ("Observation?combo-code:text=systolic", &["o3", "o4"]),
        ("Observation?combo-value-quantity=gt140", &["o4"]),
        ("Observation?combo-value-quantity=37.5", &["o6"]),
        ("Observation?subject=Group/g-ward", &["o6"]),
        ("Observation?patient=g-ward", &[]),
        ("Observation?patient:missing=true", &["o6"]),
        (
            "Observation?patient:missing=false",
            &["o1", "o2", "o3", "o4", "o5"],
        ),
        ("Encounter?patient=p-an", &["e1"]),
        ("Encounter?patient:identifier=087080000001", &["e1"]),
        ("Appointment?patient=p-hoa", &["a1"]),
        ("Appointment?practitioner=d1", &["a1"]),
        ("Appointment?patient=d1", &[]),
        ("Appointment?actor=Practitioner/d1", &["a1"]),
        ("Patient?_has:Appointment:patient:status=booked", &["p-hoa"]),
        ("Appointment?patient.name=tran", &["a1"]),
    ];
    let mut failures = Vec::new();
    for (query, expected) in cases {
        let found: BTreeSet<String> = ids(&search(&app, query).await, "match")
            .into_iter()
            .collect();
        let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
        if found != expected {
            failures.push(format!("{query}: expected {expected:?}, found {found:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // POST _search answers the same.
    let posted: Value = app
        .request(reqwest::Method::POST, "/fhir/Patient/_search")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("name=nguyen&gender=female")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&posted, "match"), ["p-nguyet"]);
    // `_include` through `patient` brings the patients, not the ward.
    let included = search(&app, "Observation?_id=o3,o6&_include=Observation:patient").await;
    assert_eq!(ids(&included, "include"), ["p-hoa"]);
    let included = search(&app, "Observation?_id=o3,o6&_include=Observation:subject").await;
    let mut subjects = ids(&included, "include");
    subjects.sort();
    assert_eq!(subjects, ["g-ward", "p-hoa"]);
}

async fn sorting_paging_includes_and_totals(app: TestApp) {
    load(&app).await;
    let sorted = search(&app, "Patient?_sort=birthdate").await;
    assert_eq!(
        ids(&sorted, "match"),
        ["p-nguyet", "p-an", "p-hoa", "p-duong"]
    );
    let sorted = search(&app, "Patient?_sort=-birthdate").await;
    assert_eq!(
        ids(&sorted, "match"),
        ["p-duong", "p-hoa", "p-an", "p-nguyet"]
    );
    let sorted = search(&app, "Patient?_sort=gender,-family").await;
    assert_eq!(
        ids(&sorted, "match"),
        ["p-hoa", "p-nguyet", "p-an", "p-duong"]
    );
    // Pages follow the next links to the end, each resource once.
    for query in ["Patient?_count=3", "Patient?_count=3&_sort=-birthdate"] {
        let mut seen = all_pages(&app, query).await;
        seen.sort();
        assert_eq!(seen, ["p-an", "p-duong", "p-hoa", "p-nguyet"], "{query}");
    }
    // Pages that start from a condition's index rows page the same way, a resource with two
    // matching names (p-nguyet: family and given) once.
    assert_eq!(
        all_pages(&app, "Observation?status=final&_count=2").await,
        ["o1", "o2", "o4", "o5"]
    );
    assert_eq!(
        all_pages(&app, "Patient?name=nguy&_count=1").await,
        ["p-an", "p-nguyet"]
    );
    assert_eq!(
        all_pages(&app, "Patient?given=thi&family=nguyen&_count=1").await,
        ["p-nguyet"]
    );
    let included = search(&app, "Observation?code=8867-4&_include=Observation:subject").await;
    assert_eq!(
        ids(&included, "include")
            .into_iter()
            .collect::<BTreeSet<_>>(),
        ["p-an", "p-hoa"].into_iter().map(String::from).collect()
    );
    let iterated = search(
        &app,
        "Observation?_id=o1&_include=Observation:subject&_include:iterate=Patient:general-practitioner",
    )
    .await;
    assert_eq!(
        ids(&iterated, "include")
            .into_iter()
            .collect::<BTreeSet<_>>(),
        ["d1", "p-an"].into_iter().map(String::from).collect()
    );
    let reverse = search(&app, "Patient?_id=p-an&_revinclude=Observation:subject").await;
    assert_eq!(
        ids(&reverse, "include")
            .into_iter()
            .collect::<BTreeSet<_>>(),
        ["o1", "o2"].into_iter().map(String::from).collect()
    );
    let total = search(&app, "Observation?code=8867-4&_total=accurate&_count=1").await;
    assert_eq!(total["total"], 3);
    assert_eq!(ids(&total, "match").len(), 1);
    for query in [
        "Observation?code=8867-4&_summary=count",
        "Observation?code=8867-4&_count=0",
    ] {
        let count = search(&app, query).await;
        assert_eq!(count["total"], 3, "{query}");
        assert!(count.get("entry").is_none(), "{query}: {count}");
    }
    // A total counts resources, not matching index rows (p-nguyet's family and given names
    // both start with "nguy"), whichever condition comes first, and only current ones.
    let deleted = app
        .request(reqwest::Method::DELETE, "/fhir/Observation/o2")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    // One value under two systems is two index rows of one resource: one match.
    let twice = json!({"resourceType": "Practitioner", "id": "d2",
        "identifier": [{"system": "urn:sen:a", "value": "7"}, {"system": "urn:sen:b", "value": "7"}]});
    assert_eq!(
        app.put("/fhir/Practitioner/d2", &twice).await.status(),
        StatusCode::CREATED
    );
    for (query, expected) in [
        ("Practitioner?identifier=urn:sen:b|7", 1),
        ("Practitioner?identifier=7", 1),
        ("Patient?name=nguy", 2),
        ("Patient?name=nguy,tran", 3),
        ("Patient?name=nguy&gender=female", 1),
        ("Patient?gender=female&name=nguy", 1),
        ("Patient?gender:not=male&name=nguy", 1),
        ("Patient?name=nguy&_lastUpdated=gt2000-01-01", 2),
        ("Patient?name=nguy&_id=p-an,p-hoa", 1),
        ("Observation?code=8867-4", 2),
        ("Observation?subject=Patient/p-an&code=8867-4", 1),
        ("Patient/p-hoa/Observation?code=8867-4", 1),
        ("Observation?code=8867-4&subject:Patient.name=nguy", 1),
    ] {
        // Counted (a page of one leaves matches out) and seen whole on one page.
        let counted = search(&app, &format!("{query}&_total=accurate&_count=1")).await;
        assert_eq!(counted["total"], expected, "{query}");
        let bundle = search(&app, &format!("{query}&_total=accurate")).await;
        assert_eq!(bundle["total"], expected, "{query}");
        assert_eq!(ids(&bundle, "match").len(), expected, "{query}");
    }
    // An estimate: exact when the first page holds every match; otherwise never below what
    // the page shows (PostgreSQL's planner estimate; SQLite counts).
    let whole = search(&app, "Observation?code=8867-4&_total=estimate").await;
    assert_eq!(whole["total"], 2);
    let estimated = search(&app, "Observation?status=final&_total=estimate&_count=1").await;
    assert!(estimated["total"].as_u64().unwrap() >= 2, "{estimated}");
}

/// A sorted search's next links carry the position of their last resource: pages keep
/// their place while others create and delete resources before and after it.
async fn sorted_pages_keep_their_place_while_others_write(app: TestApp) {
    load(&app).await;
    let undated = json!({"resourceType": "Patient", "id": "p-none", "gender": "male"});
    assert_eq!(
        app.put("/fhir/Patient/p-none", &undated).await.status(),
        StatusCode::CREATED
    );
    let born =
        |id: &str, date: &str| json!({"resourceType": "Patient", "id": id, "birthDate": date});
    let next_of = |page: &Value| {
        page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| {
                l["url"]
                    .as_str()
                    .unwrap()
                    .split("/fhir/")
                    .nth(1)
                    .unwrap()
                    .to_string()
            })
    };
    let mut seen = Vec::new();
    let mut page = search(&app, "Patient?_sort=birthdate&_count=1").await;
    let mut step = 0;
    loop {
        seen.extend(ids(&page, "match"));
        match step {
            // Before the position: an offset would show p-nguyet again.
            0 => assert_eq!(
                app.put("/fhir/Patient/p-early", &born("p-early", "1970"))
                    .await
                    .status(),
                StatusCode::CREATED
            ),
            // A resource already seen goes away (an offset would skip p-hoa), one after the
            // position arrives.
            1 => {
                let gone = app
                    .request(reqwest::Method::DELETE, "/fhir/Patient/p-nguyet")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(gone.status(), StatusCode::OK);
                assert_eq!(
                    app.put("/fhir/Patient/p-late", &born("p-late", "2010-01-01"))
                        .await
                        .status(),
                    StatusCode::CREATED
                );
            }
            _ => {}
        }
        step += 1;
        let Some(next) = next_of(&page) else { break };
        page = search(&app, &next).await;
    }
    assert_eq!(
        seen,
        ["p-nguyet", "p-an", "p-hoa", "p-duong", "p-late", "p-none"]
    );
    // Descending, several keys, text and missing values: pages of one give the same order as
    // one page of all.
    for sort in [
        "-birthdate",
        "gender,-family",
        "family,-_lastUpdated",
        "-_id",
    ] {
        let whole = ids(
            &search(&app, &format!("Patient?_sort={sort}")).await,
            "match",
        );
        assert_eq!(whole.len(), 6, "{sort}");
        assert_eq!(
            all_pages(&app, &format!("Patient?_sort={sort}&_count=1")).await,
            whole,
            "{sort}"
        );
    }
    assert_eq!(
        all_pages(&app, "Patient?_sort=-birthdate&_count=2").await,
        ["p-late", "p-duong", "p-hoa", "p-an", "p-early", "p-none"]
    );
    // Tokens of another sort order, made up, or from before positions: refused.
    let family_page = search(&app, "Patient?_sort=family&_count=1").await;
    let family_token = next_of(&family_page)
        .unwrap()
        .split("_page_token=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string();
    for query in [
        format!("Patient?_sort=birthdate&_page_token={family_token}"),
        "Patient?_sort=birthdate&_page_token=W10".to_string(),
        "Patient?_sort=birthdate&_page_token=p-an".to_string(),
        "Patient?_sort=birthdate&_page_offset=2".to_string(),
    ] {
        let response = app.get(&format!("/fhir/{query}")).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let outcome: Value = response.json().await.unwrap();
        let named = if query.contains("_page_offset") {
            "_page_offset"
        } else {
            "_page_token"
        };
        assert!(
            outcome["issue"][0]["diagnostics"]
                .as_str()
                .unwrap()
                .starts_with(named),
            "{query}: {outcome}"
        );
    }
}

async fn unknown_parameters_are_reported_or_refused(app: TestApp) {
    load(&app).await;
    let lenient = search(&app, "Patient?gender=female&nickname=x").await;
    assert_eq!(ids(&lenient, "match"), ["p-hoa", "p-nguyet"]);
    let outcome = lenient["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .expect("an outcome entry");
    assert!(
        outcome["resource"]["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("nickname"),
        "{outcome}"
    );
    let strict = app
        .request(
            reqwest::Method::GET,
            "/fhir/Patient?gender=female&nickname=x",
        )
        .header("prefer", "handling=strict")
        .send()
        .await
        .unwrap();
    assert_eq!(strict.status(), StatusCode::BAD_REQUEST);
    let ambiguous = app.get("/fhir/Patient?general-practitioner.name=le").await;
    assert_eq!(ambiguous.status(), StatusCode::BAD_REQUEST);
}

async fn reindex_rebuilds_the_index_of_resources_written_before_it(app: TestApp) {
    load(&app).await;
    app.drop_search_index().await;
    assert!(ids(&search(&app, "Patient?name=nguyen").await, "match").is_empty());
    let started = app
        .request(reqwest::Method::POST, "/fhir/$reindex")
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    // The status waits for the job's end (at most 30 s) rather than the test sleeping.
    let status: Value = app
        .get("/fhir/$reindex?wait=30")
        .await
        .json()
        .await
        .unwrap();
    let value = |name: &str| {
        status["parameter"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(value("status")["valueCode"], "finished", "{status}");
    // The ten patients, and the AuditEvents recorded so far.
    assert!(
        value("indexed")["valueInteger"].as_i64().unwrap() >= 10,
        "{status}"
    );
    let found: BTreeSet<String> = ids(&search(&app, "Patient?name=nguyen").await, "match")
        .into_iter()
        .collect();
    assert_eq!(
        found,
        ["p-an", "p-nguyet"].into_iter().map(String::from).collect()
    );
    assert_eq!(
        ids(
            &search(&app, "Observation?subject:Patient.name=tran").await,
            "match"
        )
        .len(),
        2
    );
    let bad = app
        .request(reqwest::Method::POST, "/fhir/$reindex?_type=Nobody")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::NOT_FOUND);
}

/// A search past the configured statement timeout is cut short on both backends: a 4xx
/// "too costly", and the (single) reading connection is free again at once.
async fn a_search_past_the_statement_timeout_is_too_costly(app: TestApp) {
    load(&app).await;
    // Enough index rows of one patient that a substring scan takes far longer than the
    // statement timeout,
    // whether it starts from the index rows or probes them by resource key.
    let filler = match app.db.backend() {
        Backend::Postgres => {
            "INSERT INTO ehr.sp_string (resource_type, id, rid, code, grp, folded, exact) \
             SELECT 'Patient', 'p-an', (SELECT rid FROM ehr.resource WHERE id = 'p-an'), 'name', 0, \
             md5(g::text) || md5((g * 7)::text), 'x' FROM generate_series(1, 400000) g"
        }
        Backend::Sqlite => {
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 1000000) \
             INSERT INTO ehr_sp_string (resource_type, id, rid, code, grp, folded, exact) \
             SELECT 'Patient', 'p-an', (SELECT rid FROM ehr_resource WHERE id = 'p-an'), 'name', 0, \
             lower(hex(randomblob(32))), 'x' FROM g"
        }
    };
    sqlx::query(filler).execute(app.db.writer()).await.unwrap();
    for path in [
        "/fhir/Patient?name:contains=zzzz&name:contains=yyyy",
        "/fhir/Patient?name:contains=zzzz&_summary=count",
    ] {
        let response = app.get(path).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
        let outcome: Value = response.json().await.unwrap();
        assert_eq!(outcome["issue"][0]["code"], "too-costly", "{outcome}");
    }
    // Cheap searches still answer.
    assert_eq!(
        ids(&search(&app, "Patient?_id=p-hoa").await, "match"),
        ["p-hoa"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_past_the_statement_timeout_is_too_costly_on_sqlite() {
    // SQLite scans these rows in about 115 ms on the development machine.
    let app = TestApp::sqlite_with(|c| {
        c.database.statement_timeout_ms = 25;
        c.database.max_connections = 1;
    })
    .await;
    a_search_past_the_statement_timeout_is_too_costly(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_past_the_statement_timeout_is_too_costly_on_postgres() {
    let Some(app) = TestApp::postgres_with(|c| {
        c.database.statement_timeout_ms = 50;
        c.database.max_connections = 1;
    })
    .await
    else {
        return;
    };
    a_search_past_the_statement_timeout_is_too_costly(app).await;
}

async fn compartment_search_stays_inside_the_patient_compartment(app: TestApp) {
    load(&app).await;
    let mine = search(&app, "Patient/p-hoa/Observation").await;
    assert_eq!(
        ids(&mine, "match").into_iter().collect::<BTreeSet<_>>(),
        ["o3", "o5"].into_iter().map(String::from).collect()
    );
    let narrowed = search(&app, "Patient/p-hoa/Observation?code=8867-4").await;
    assert_eq!(ids(&narrowed, "match"), ["o5"]);
    // Next links keep the compartment.
    let paged = search(&app, "Patient/p-an/Observation?_count=1").await;
    let next = paged["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(next.contains("/fhir/Patient/p-an/Observation?"), "{next}");
    let second = search(&app, next.split("/fhir/").nth(1).unwrap()).await;
    assert_eq!(ids(&second, "match"), ["o2"]);
    // A type outside the compartment, or another compartment: 400.
    for path in [
        "/fhir/Patient/p-an/Practitioner",
        "/fhir/Practitioner/d1/Patient",
    ] {
        assert_eq!(
            app.get(path).await.status(),
            StatusCode::BAD_REQUEST,
            "{path}"
        );
    }
}

/// The index follows the resource through its life: a PUT that creates, an update, a delete
/// and a PUT that brings the id back each leave exactly the current version findable.
async fn updates_and_deletes_replace_what_searches_find(app: TestApp) {
    let path = "/fhir/Patient/life-1";
    let named = |family: &str| json!({"resourceType": "Patient", "id": "life-1", "name": [{"family": family}]});
    let found = |family: &'static str| {
        let app = &app;
        async move {
            let bundle = search(app, &format!("Patient?name={family}&_total=accurate")).await;
            (ids(&bundle, "match"), bundle["total"].clone())
        }
    };
    let one = (vec!["life-1".to_string()], json!(1));
    let none = (Vec::<String>::new(), json!(0));

    assert_eq!(
        app.put(path, &named("Ánh")).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(found("anh").await, one);

    assert_eq!(app.put(path, &named("Bạch")).await.status(), StatusCode::OK);
    assert_eq!(found("anh").await, none);
    assert_eq!(found("bach").await, one);

    let deleted = app
        .request(reqwest::Method::DELETE, path)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    assert_eq!(found("bach").await, none);

    assert_eq!(
        app.put(path, &named("Cao")).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(found("bach").await, none);
    assert_eq!(found("cao").await, one);
}

/// A name common enough that its pages walk the name rows in id order (SQLite decides by
/// counting the prefix's rows, at 400 and more): every patient once, in id order, also those
/// with two matching names.
async fn a_common_name_pages_through_all_its_patients_once(app: TestApp) {
    let entries: Vec<Value> = (0..450)
        .map(|i| {
            let id = format!("w-{i:03}");
            let given = if i % 2 == 0 { "Lâm" } else { "Hà" };
            json!({"request": {"method": "PUT", "url": format!("Patient/{id}")},
                "resource": {"resourceType": "Patient", "id": id,
                    "name": [{"family": "Lâm", "given": [given]}]}})
        })
        .collect();
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let response = app
        .request(reqwest::Method::POST, "/fhir")
        .header("content-type", "application/fhir+json")
        .body(bundle.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let rare = json!({"resourceType": "Patient", "id": "w-rare", "name": [{"family": "Lâmbert"}]});
    assert_eq!(
        app.put("/fhir/Patient/w-rare", &rare).await.status(),
        StatusCode::CREATED
    );
    let mut all: Vec<String> = (0..450).map(|i| format!("w-{i:03}")).collect();
    all.push("w-rare".into());
    for query in [
        "Patient?name=lam&_count=50",
        "Patient?family=LAM&_count=64",
        "Patient?name=l%C3%A2m&_count=450",
    ] {
        assert_eq!(all_pages(&app, query).await, all, "{query}");
    }
    let given: Vec<String> = (0..450).step_by(2).map(|i| format!("w-{i:03}")).collect();
    assert_eq!(all_pages(&app, "Patient?given=lam&_count=40").await, given);
    assert_eq!(all_pages(&app, "Patient?name=lambert").await, ["w-rare"]);
    let counted = search(&app, "Patient?name=lam&_total=accurate&_count=1").await;
    assert_eq!(counted["total"], 451);
}
