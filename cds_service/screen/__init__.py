"""Population pre-screening: the engine over a FHIR Bulk Data export, producing a worklist.

``source`` reads NDJSON and routes each line to its patient; ``shards`` groups them on disk;
``patient`` evaluates one patient (the function both engines run); ``local`` and ``spark`` are the
engines; ``outputs`` and ``worklist`` write the files; ``run`` ties a screen together; ``export``
runs a Bulk Data export first (``cds_service.fhir.bulk``); ``cli`` is ``cds-service screen``.
"""
