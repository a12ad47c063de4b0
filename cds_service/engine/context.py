"""The evaluation context: one patient's record, the compiled value sets, and the clock."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

from cds_service.engine.valuesets import CompiledValueSet
from cds_service.record import PatientRecord


@dataclass(frozen=True)
class Context:
    record: PatientRecord
    valuesets: Mapping[str, CompiledValueSet]
    as_of: date

    def valueset(self, name: str) -> CompiledValueSet:
        return self.valuesets[name]  # names were checked when the mappings loaded
