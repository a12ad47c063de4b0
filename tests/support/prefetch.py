"""Build CDS Hooks prefetch from a patient Bundle (re-exported from cds_service.demo_request)."""

from cds_service.demo_request import patient_id, prefetch_from_bundle, resources_of, searchset

__all__ = ["patient_id", "prefetch_from_bundle", "resources_of", "searchset"]
