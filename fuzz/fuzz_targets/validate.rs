//! Arbitrary bytes through the path every client write takes: parse, structural validation,
//! JSON Patch application and the stored form. Nothing here may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sen_ehr::{definitions::Definitions, patch, resource::IncomingResource};

fuzz_target!(|data: &[u8]| {
    let defs = Definitions::r4();
    if let Ok(resource) = IncomingResource::parse(data, defs) {
        let _ = resource.validate();
        let stored = resource.stored_json("fuzz", 1, "2026-01-01T00:00:00.000Z");
        let again =
            IncomingResource::parse(stored.as_bytes(), defs).expect("stored JSON parses again");
        assert_eq!(again.resource_type, resource.resource_type);
    }
    // The same bytes as a patch document against a fixed resource.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = patch::apply(
            r#"{"resourceType":"Patient","id":"p","name":[{"family":"Nguyễn","given":["Hoa"]}],"birthDate":"1990-04-30"}"#,
            text,
        );
    }
});
