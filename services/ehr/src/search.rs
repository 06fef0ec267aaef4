//! FHIR search: the R4 search parameters, index extraction on every write, and queries.

pub mod dates;
pub mod extract;
pub mod keyset;
pub mod params;
pub mod query;
pub mod text;
