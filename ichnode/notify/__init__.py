"""Result notifications for the RIS and the EHR: HL7 v2.5.1 ORU^R01 over MLLP, FHIR R4
DiagnosticReport over HTTP.

:mod:`.facts` is what a message says (read from the database once), :mod:`.codes` codes each
finding with the one table the SR also uses (:data:`ichnode.subtypes.SNOMED_CT`),
:mod:`.hl7v2` and :mod:`.fhir` build and send. The durable outbox is
:mod:`ichnode.db.notifications`, the loop :mod:`ichnode.node.notifier`.

Messages carry the patient's name and id because their receivers file results by them; they
are never logged.
"""

from __future__ import annotations


class NotifyError(Exception):
    """A notification was not accepted (the message says why, without PHI); ``response`` is
    the receiver's answer when there was one (an ACK code, ``HTTP 500``)."""

    def __init__(self, message: str, response: str | None = None) -> None:
        super().__init__(message)
        self.response = response
