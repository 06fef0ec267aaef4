//! In-process validation throughput (issue 3: ≥ 20,000 typical resources/s per core).
//! `cargo bench -p sen-loadtests --bench validation`; criterion runs on one thread, so the
//! reciprocal of the time per resource is the per-core rate.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sen_ehr::{definitions::Definitions, profiles::Registry, resource::IncomingResource};

const PATIENT: &str = r#"{"resourceType":"Patient","identifier":[{"system":"http://fhir.ehealth.gov.vn/core/sid/national_id","value":"087090001234"},{"system":"http://fhir.ehealth.gov.vn/core/sid/insurance_number","value":"GD4828700001234"}],"active":true,"name":[{"use":"official","family":"Nguyễn","given":["Thị","Hoa"]}],"telecom":[{"system":"phone","value":"0912345678","use":"mobile"}],"gender":"female","birthDate":"1990-04-30","address":[{"use":"home","line":["12 đường Lê Lợi"],"city":"Phường Cao Lãnh","state":"Đồng Tháp","country":"VN","extension":[{"url":"http://fhir.ehealth.gov.vn/core/StructureDefinition/ward-code","valueCode":"29869"}]}]}"#;
const OBSERVATION: &str = r#"{"resourceType":"Observation","status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}]},"subject":{"reference":"Patient/load-1"},"encounter":{"reference":"Encounter/e1"},"effectiveDateTime":"2026-11-26T08:30:00+07:00","valueQuantity":{"value":72,"unit":"beats/minute","system":"http://unitsofmeasure.org","code":"/min"}}"#;
const ENCOUNTER: &str = r#"{"resourceType":"Encounter","status":"finished","class":{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"VR","display":"virtual"},"type":[{"text":"Khám từ xa"}],"subject":{"reference":"Patient/load-1"},"participant":[{"individual":{"reference":"Practitioner/p1"}}],"period":{"start":"2026-11-26T08:00:00+07:00","end":"2026-11-26T08:20:00+07:00"},"reasonCode":[{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10","code":"J00"}]}],"serviceProvider":{"reference":"Organization/o1"}}"#;

/// The same patient, claiming Sen's Vietnamese Patient profile, with its ethnicity and ward.
const PATIENT_VN: &str = r#"{"resourceType":"Patient","meta":{"profile":["http://fhir.sen.vn/StructureDefinition/sen-vn-patient"]},"extension":[{"url":"http://fhir.sen.vn/StructureDefinition/sen-vn-ethnicity","valueCoding":{"system":"http://fhir.sen.vn/CodeSystem/vn-ethnic-groups","code":"01","display":"Kinh"}}],"identifier":[{"system":"http://fhir.ehealth.gov.vn/core/sid/national_id","value":"087090001234"},{"system":"http://fhir.ehealth.gov.vn/core/sid/insurance_number","value":"GD4828700001234"}],"active":true,"name":[{"use":"official","family":"Nguyễn","given":["Thị","Hoa"]}],"telecom":[{"system":"phone","value":"0912345678","use":"mobile"}],"gender":"female","birthDate":"1990-04-30","address":[{"use":"home","line":["12 đường Lê Lợi"],"city":"Phường Cao Lãnh","state":"Đồng Tháp","country":"VN","extension":[{"url":"http://fhir.sen.vn/StructureDefinition/sen-vn-address-ward","valueCoding":{"system":"http://fhir.sen.vn/CodeSystem/vn-administrative-units","code":"29869"}}]}]}"#;

fn bench(c: &mut Criterion) {
    let defs = Definitions::r4();
    let mut group = c.benchmark_group("validate");
    group.throughput(Throughput::Elements(1));
    for (name, body) in [
        ("Patient", PATIENT),
        ("Observation", OBSERVATION),
        ("Encounter", ENCOUNTER),
    ] {
        // The whole write-path check: parse, then validate against the R4 definitions.
        IncomingResource::parse(body.as_bytes(), defs)
            .unwrap()
            .validate()
            .unwrap();
        group.bench_function(name, |b| {
            b.iter(|| {
                let resource =
                    IncomingResource::parse(std::hint::black_box(body.as_bytes()), defs).unwrap();
                resource.validate().unwrap();
            })
        });
    }
    // Base validation plus the Vietnamese Patient profile the resource claims.
    let registry = Registry::load(None).unwrap();
    let profile = registry
        .profile("http://fhir.sen.vn/StructureDefinition/sen-vn-patient")
        .unwrap();
    let check = |body: &str| {
        let resource = IncomingResource::parse(body.as_bytes(), defs).unwrap();
        resource.validate().unwrap();
        registry.check(profile, resource.tree())
    };
    assert!(check(PATIENT_VN).is_empty(), "{:?}", check(PATIENT_VN));
    group.bench_function("Patient+sen-vn-patient", |b| {
        b.iter(|| check(std::hint::black_box(PATIENT_VN)))
    });
    group.finish();

    // Search index extraction: every search parameter of the type, as a write does it.
    let mut group = c.benchmark_group("extract");
    group.throughput(Throughput::Elements(1));
    for (name, body) in [
        ("Patient", PATIENT),
        ("Observation", OBSERVATION),
        ("Encounter", ENCOUNTER),
    ] {
        let value: serde_json::Value = serde_json::from_str(body).unwrap();
        let rt = defs.resource_type(name).unwrap();
        assert!(!sen_ehr::search::extract::extract(rt, &value).is_empty());
        group.bench_function(name, |b| {
            b.iter(|| sen_ehr::search::extract::extract(rt, std::hint::black_box(&value)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
