"""CDS Hooks endpoints: authentication of the calling EHR, request handling."""
