"""Talking to FHIR servers: the EHR's, for hooks that lack prefetch, and the SMART launch's."""
