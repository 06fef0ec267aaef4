//! Shared by Sen's load tools: the deterministic city data the search benchmark loads and queries.

pub mod city;
