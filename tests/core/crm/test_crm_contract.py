"""The in-process CRM the core's sync tests use is held to the same contract as HubSpot's and
Salesforce's connectors (postwise.testing.contracts.CrmConnectorContract)."""

from __future__ import annotations

import itertools

import pytest
from crm_memory import MemoryConnector, MemoryCrm

from postwise.testing.contracts import CrmConnectorContract

_ids = itertools.count(1)


class TestMemoryConnectorContract(CrmConnectorContract):
    @pytest.fixture(autouse=True)
    def _crm(self, memory_crm: MemoryCrm) -> None:
        self.crm = memory_crm

    def make_connector(self) -> MemoryConnector:
        return MemoryConnector(self.crm)

    def add_contact(self, email: str, first_name: str) -> str:
        external_id = f"mem-{next(_ids)}"
        self.crm.put(external_id, email, first_name=first_name)
        return external_id

    def delete_contact(self, external_id: str) -> None:
        self.crm.delete(external_id)
        self.crm.missing.add(external_id)  # a CRM says "no such record" for it from now on
