//! Organization rules (issue 5): practitioners see the records of their organizations'
//! patients — managed there, or visiting unless the patient's Consent denies it — and may
//! break the glass with a stated reason; clinic admins manage their organization's directory;
//! patients write their own Consent.

use reqwest::{Method, StatusCode};
use sen_platform::auth::Role;
use serde_json::{Value, json};

use crate::{
    audit::audit_events,
    patient,
    support::{TestApp, status_as as status},
};

struct City {
    /// Organization ids: the clinic where the doctor works, and a hospital.
    clinic: String,
    hospital: String,
    /// A doctor of the clinic (token), and the hospital's clinic admin (token).
    doctor: String,
    hospital_admin: String,
    /// A patient the hospital manages, and one of its Observations.
    patient: String,
    observation: String,
}

async fn city(app: &TestApp) -> City {
    let org = |name: &str| json!({"resourceType": "Organization", "active": true, "name": name});
    let (clinic, _) = app.create(&org("Trạm Y tế phường Cao Lãnh")).await;
    let (hospital, _) = app.create(&org("Bệnh viện Đa khoa Đồng Tháp")).await;
    let role = |p: &str, o: &str| {
        json!({"resourceType": "PractitionerRole", "active": true,
            "practitioner": {"reference": format!("Practitioner/{p}")},
            "organization": {"reference": format!("Organization/{o}")}})
    };
    let (doctor, _) = app.create(&json!({"resourceType": "Practitioner"})).await;
    app.create(&role(&doctor, &clinic)).await;
    let (admin, _) = app.create(&json!({"resourceType": "Practitioner"})).await;
    app.create(&role(&admin, &hospital)).await;
    let mut managed = patient("087090000401");
    managed["managingOrganization"] = json!({"reference": format!("Organization/{hospital}")});
    let (patient, _) = app.create(&managed).await;
    let (observation, _) = app
        .create(&json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": format!("Patient/{patient}")}}))
        .await;
    City {
        doctor: app.practitioner_token(Role::Practitioner, &doctor),
        hospital_admin: app.practitioner_token(Role::ClinicAdmin, &admin),
        clinic,
        hospital,
        patient,
        observation,
    }
}

/// Outside its organizations a practitioner reads only with a stated reason; the access is
/// allowed, and its AuditEvent says it was break-the-glass and why. Writes never pass so.
async fn break_the_glass_is_allowed_flagged_and_audited(app: TestApp) {
    let c = city(&app).await;
    let read = format!("/fhir/Observation/{}", c.observation);
    let get = Method::GET;
    assert_eq!(
        status(&app, &c.doctor, get.clone(), &read, &[], None).await,
        StatusCode::NOT_FOUND
    );
    let reason = "patient unconscious in the emergency room";
    let glass = [("x-break-glass", reason), ("x-request-id", "glass-read")];
    assert_eq!(
        status(&app, &c.doctor, get.clone(), &read, &glass, None).await,
        StatusCode::OK
    );
    let search = format!("/fhir/Observation?subject=Patient/{}", c.patient);
    assert_eq!(
        status(&app, &c.doctor, get.clone(), &search, &glass[..1], None).await,
        StatusCode::OK
    );
    let note = json!({"resourceType": "Observation", "status": "final",
        "code": {"text": "note"}, "subject": {"reference": format!("Patient/{}", c.patient)}});
    assert_eq!(
        status(
            &app,
            &c.doctor,
            Method::POST,
            "/fhir/Observation",
            &glass[..1],
            Some(&note)
        )
        .await,
        StatusCode::NOT_FOUND,
        "break-the-glass opens reads, not writes"
    );
    let empty = [("x-break-glass", " ")];
    assert_eq!(
        status(&app, &c.doctor, get.clone(), &read, &empty, None).await,
        StatusCode::BAD_REQUEST,
        "a reason must be stated"
    );
    let events = audit_events(&app, "/fhir/AuditEvent?_count=1000").await;
    let flagged: Vec<&Value> = events
        .iter()
        .filter(|e| e["meta"]["security"][0]["code"] == "BTG")
        .collect();
    assert_eq!(flagged.len(), 2, "the read and the search are flagged");
    let read_event = flagged
        .iter()
        .find(|e| crate::audit::request_id(e).as_deref() == Some("glass-read"))
        .expect("the read's AuditEvent");
    assert_eq!(read_event["purposeOfEvent"][0]["coding"][0]["code"], "BTG");
    assert_eq!(read_event["purposeOfEvent"][0]["text"], reason);
    assert_eq!(read_event["outcome"], "0");
}

/// A visit (an Encounter the clinic provided) opens the patient's records to the clinic's
/// practitioners; the patient's Consent denying the clinic closes them again. The patient
/// writes its own Consent, not another's.
async fn a_visit_opens_records_until_the_patients_consent_denies_it(app: TestApp) {
    let c = city(&app).await;
    let read = format!("/fhir/Observation/{}", c.observation);
    let get = Method::GET;
    assert_eq!(
        status(&app, &c.doctor, get.clone(), &read, &[], None).await,
        StatusCode::NOT_FOUND
    );
    app.create(&json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": format!("Patient/{}", c.patient)},
        "serviceProvider": {"reference": format!("Organization/{}", c.clinic)}}))
        .await;
    assert_eq!(
        status(&app, &c.doctor, get.clone(), &read, &[], None).await,
        StatusCode::OK
    );
    let me = app.token(Role::Patient, Some(&c.patient), None);
    let consent = |patient: &str, org: &str| {
        json!({"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": format!("Patient/{patient}")},
            "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]},
            "provision": {"type": "deny",
                "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                           "reference": {"reference": format!("Organization/{org}")}}]}})
    };
    let (someone, _) = app.create(&patient("087090000402")).await;
    assert_eq!(
        status(
            &app,
            &me,
            Method::POST,
            "/fhir/Consent",
            &[],
            Some(&consent(&someone, &c.clinic))
        )
        .await,
        StatusCode::FORBIDDEN,
        "a patient writes its own Consent only"
    );
    assert_eq!(
        status(
            &app,
            &me,
            Method::POST,
            "/fhir/Consent",
            &[],
            Some(&consent(&c.patient, &c.clinic))
        )
        .await,
        StatusCode::CREATED
    );
    assert_eq!(
        status(&app, &c.doctor, get.clone(), &read, &[], None).await,
        StatusCode::NOT_FOUND,
        "the Consent denies the clinic"
    );
    // The hospital, which manages the patient, still sees it.
    let mut nurse = json!({"resourceType": "Practitioner"});
    nurse["id"] = json!("nurse-1");
    app.put("/fhir/Practitioner/nurse-1", &nurse).await;
    app.create(&json!({"resourceType": "PractitionerRole", "active": true,
        "practitioner": {"reference": "Practitioner/nurse-1"},
        "organization": {"reference": format!("Organization/{}", c.hospital)}}))
        .await;
    let nurse = app.practitioner_token(Role::Practitioner, "nurse-1");
    assert_eq!(
        status(&app, &nurse, get.clone(), &read, &[], None).await,
        StatusCode::OK
    );
    // The patient reads its Consent through its compartment.
    let mine: Value = app
        .request_as(&me, get, "/fhir/Consent")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mine["entry"].as_array().unwrap().len(), 1, "{mine}");
}

/// A clinic admin registers its organization's patients and manages its directory; not
/// another organization's, and no clinical record.
async fn a_clinic_admin_manages_its_organizations_directory_only(app: TestApp) {
    let c = city(&app).await;
    let location = |org: &str| {
        json!({"resourceType": "Location", "status": "active", "name": "Phòng khám 1",
            "managingOrganization": {"reference": format!("Organization/{org}")}})
    };
    let admin = &c.hospital_admin;
    let post = Method::POST;
    assert_eq!(
        status(
            &app,
            admin,
            post.clone(),
            "/fhir/Location",
            &[],
            Some(&location(&c.hospital))
        )
        .await,
        StatusCode::CREATED
    );
    assert_eq!(
        status(
            &app,
            admin,
            post.clone(),
            "/fhir/Location",
            &[],
            Some(&location(&c.clinic))
        )
        .await,
        StatusCode::FORBIDDEN
    );
    let read = format!("/fhir/Patient/{}", c.patient);
    assert_eq!(
        status(&app, admin, Method::GET, &read, &[], None).await,
        StatusCode::OK
    );
    let observation = format!("/fhir/Observation/{}", c.observation);
    assert_eq!(
        status(&app, admin, Method::GET, &observation, &[], None).await,
        StatusCode::FORBIDDEN
    );
    // Neither browses the access log (the patient and admin clients do).
    for token in [admin, &c.doctor] {
        assert_eq!(
            status(&app, token, Method::GET, "/fhir/AuditEvent", &[], None).await,
            StatusCode::FORBIDDEN
        );
    }
    // A doctor does not edit the directory.
    assert_eq!(
        status(
            &app,
            &c.doctor,
            post,
            "/fhir/Location",
            &[],
            Some(&location(&c.clinic))
        )
        .await,
        StatusCode::FORBIDDEN
    );
}

/// A conditional create answers an existing match with its content: with a narrowed token its
/// criteria must name the record's own patient, so it tells nothing of anyone else's records.
async fn conditional_creates_tell_nothing_outside_the_callers_patients(app: TestApp) {
    let c = city(&app).await;
    let mut own = patient("087090000402");
    own["managingOrganization"] = json!({"reference": format!("Organization/{}", c.clinic)});
    let (own, _) = app.create(&own).await;
    let post = Method::POST;
    let note = |p: &str| {
        json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": format!("Patient/{p}")}})
    };
    let mine = format!("subject=Patient/{own}&code=8867-4");
    let criteria = [("if-none-exist", mine.as_str())];
    let path = "/fhir/Observation";
    let created = status(
        &app,
        &c.doctor,
        post.clone(),
        path,
        &criteria,
        Some(&note(&own)),
    )
    .await;
    assert_eq!(created, StatusCode::CREATED);
    let again = status(
        &app,
        &c.doctor,
        post.clone(),
        path,
        &criteria,
        Some(&note(&own)),
    )
    .await;
    assert_eq!(again, StatusCode::OK, "the match is its own patient's");
    // Criteria that do not name the patient would match the hospital's patient's Observation.
    for criteria in [
        "code=8867-4",
        &format!("subject=Patient/{}", c.patient),
        &format!("subject=Patient/{own}&_has:Observation:subject:code=x"),
    ] {
        let refused = status(
            &app,
            &c.doctor,
            post.clone(),
            path,
            &[("if-none-exist", criteria)],
            Some(&note(&own)),
        )
        .await;
        assert_eq!(refused, StatusCode::FORBIDDEN, "{criteria}");
    }
    // A Patient found by its identifier would be the hospital's.
    let mut twin = patient("087090000401");
    twin["managingOrganization"] = json!({"reference": format!("Organization/{}", c.clinic)});
    let by_id = format!("identifier={}|087090000401", crate::CCCD);
    let refused = status(
        &app,
        &c.doctor,
        post.clone(),
        "/fhir/Patient",
        &[("if-none-exist", by_id.as_str())],
        Some(&twin),
    )
    .await;
    assert_eq!(refused, StatusCode::FORBIDDEN);
    // A patient's own Consent, found by another patient's criteria: refused.
    let token = app.token(Role::Patient, Some(&own), None);
    let consent = json!({"resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{own}")},
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]}});
    let theirs = format!("patient=Patient/{}", c.patient);
    let refused = status(
        &app,
        &token,
        post.clone(),
        "/fhir/Consent",
        &[("if-none-exist", theirs.as_str())],
        Some(&consent),
    )
    .await;
    assert_eq!(refused, StatusCode::FORBIDDEN);
    let ours = format!("patient=Patient/{own}");
    let created = status(
        &app,
        &token,
        post,
        "/fhir/Consent",
        &[("if-none-exist", ours.as_str())],
        Some(&consent),
    )
    .await;
    assert_eq!(created, StatusCode::CREATED);
}

on_both_backends!(
    conditional_creates_tell_nothing_outside_the_callers_patients,
    break_the_glass_is_allowed_flagged_and_audited,
    a_visit_opens_records_until_the_patients_consent_denies_it,
    a_clinic_admin_manages_its_organizations_directory_only,
);
