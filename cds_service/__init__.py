"""cds_service: clinical-trial eligibility as CDS Hooks cards, a SMART app and a CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cds-service")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0"
