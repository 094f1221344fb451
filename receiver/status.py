"""DICOM C-STORE status codes the receiver answers with (PS3.4 B.2.3, PS3.7 C)."""

from __future__ import annotations

SUCCESS = 0x0000
# Storage or a store the receiver depends on is down: the scanner should retry later.
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
# Association rejection (PS3.8 9.3.4): rejected-permanent, service-user, calling AE not recognised.
REJECT_PERMANENT = 0x01
REJECT_SOURCE_SERVICE_USER = 0x01
REJECT_CALLING_AE_NOT_RECOGNISED = 0x03
