"""Searches a running Sen with fhirpy (PyPI), an independent FHIR client, and prints the ids
each search returned as one JSON object. fhirpy builds the query strings itself and follows
the server's `next` links (fetch_all), so this checks Sen's search as a real client uses it.

    SEN_TOKEN=<bearer token> python searches.py http://127.0.0.1:PORT/fhir
"""
import json
import os
import sys

from fhirpy import SyncFHIRClient

client = SyncFHIRClient(sys.argv[1], authorization=f"Bearer {os.environ['SEN_TOKEN']}")


def ids(search):
    return sorted(resource["id"] for resource in search.fetch_all())


patients = client.resources("Patient")
observations = client.resources("Observation")
out = {
    # Small pages force fhirpy through several next links.
    "name=nguyen (pages of 1)": ids(patients.search(name="nguyen").limit(1)),
    "family=duong": ids(patients.search(family="duong")),
    "gender=female": ids(patients.search(gender="female")),
    "birthdate ge 1990": ids(patients.search(birthdate__ge="1990-01-01")),
    "identifier": ids(
        patients.search(identifier="http://fhir.ehealth.gov.vn/core/sid/national_id|087090000002")
    ),
    "code 8867-4 (pages of 2)": ids(observations.search(code="http://loinc.org|8867-4").limit(2)),
    "code and date ge": ids(observations.search(code="8867-4", date__ge="2026-11-10")),
    "value-quantity gt 100": ids(observations.search(**{"value-quantity": "gt100"})),
    "subject chain name": ids(observations.search(**{"subject:Patient.name": "tran"})),
    "sorted by -birthdate": [p["id"] for p in patients.sort("-birthdate").fetch_all()],
    "count": patients.search(gender="male").count(),
}
print(json.dumps(out))
