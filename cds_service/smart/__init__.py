"""The SMART on FHIR app: EHR or standalone launch, then one page explaining every trial's status.

Layout: ``router`` (routes) → ``handlers`` (what they do) → ``oauth`` (discovery, authorize URL,
code exchange), ``sessions`` (server-side state and tokens), ``record_loader`` (FHIR reads and the
engine), ``view`` + ``pages`` + ``templates/`` (HTML), ``urls`` (allowlists), ``errors`` (pages).
"""

from __future__ import annotations

__all__ = ["build_smart_router"]


def __getattr__(name: str) -> object:
    if name == "build_smart_router":
        from cds_service.smart.router import build_smart_router

        return build_smart_router
    raise AttributeError(name)
