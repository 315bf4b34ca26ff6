"""Starting points for workitem data sets, as DICOM JSON (PS3.18 F.2), for ``workitem template``.

A workitem is created with some twenty attributes the standard requires (PS3.4 Table CC.2.5-3:
Type 1 with a value, Type 2 present and possibly empty), and completed or canceled only once
the performer has said what was done (Table CC.2.5-3 "Final State" requirements). These are
the smallest data sets that meet those rules, with placeholder values to replace: the archive
answers each of them as written.
"""

from __future__ import annotations

import copy
import json
from typing import Any

_CODE_STATION = {
    "00080100": {"vr": "SH", "Value": ["STATION1"]},
    "00080102": {"vr": "SH", "Value": ["99LOCAL"]},
    "00080104": {"vr": "LO", "Value": ["Reading station 1"]},
}
_CODE_TASK = {
    "00080100": {"vr": "SH", "Value": ["110005"]},
    "00080102": {"vr": "SH", "Value": ["DCM"]},
    "00080104": {"vr": "LO", "Value": ["Interpretation"]},
}

# Create: every attribute of the Scheduled Procedure Step, Patient and Admission modules the
# standard asks of an N-CREATE, in tag order.
CREATE: dict[str, Any] = {
    "00081080": {"vr": "LO"},  # AdmittingDiagnosesDescription (Type 2)
    "00081084": {"vr": "SQ"},  # AdmittingDiagnosesCodeSequence (Type 2)
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},  # PatientName
    "00100020": {"vr": "LO", "Value": ["PAT-0001"]},  # PatientID
    "00100030": {"vr": "DA"},  # PatientBirthDate (Type 2)
    "00100040": {"vr": "CS"},  # PatientSex (Type 2)
    "00380010": {"vr": "LO"},  # AdmissionID (Type 2)
    "00380014": {"vr": "SQ"},  # IssuerOfAdmissionIDSequence (Type 2)
    "00400400": {"vr": "LT"},  # CommentsOnTheScheduledProcedureStep (Type 2)
    "00404005": {"vr": "DT", "Value": ["20260101090000"]},  # ScheduledProcedureStepStartDateTime
    "00404018": {"vr": "SQ", "Value": [_CODE_TASK]},  # ScheduledWorkitemCodeSequence
    "00404021": {"vr": "SQ"},  # InputInformationSequence (Type 2)
    "00404025": {"vr": "SQ", "Value": [_CODE_STATION]},  # ScheduledStationNameCodeSequence
    "00404026": {"vr": "SQ"},  # ScheduledStationClassCodeSequence (Type 2)
    "00404027": {"vr": "SQ"},  # ScheduledStationGeographicLocationCodeSequence (Type 2)
    "00404041": {"vr": "CS", "Value": ["READY"]},  # InputReadinessState
    "0040A370": {"vr": "SQ"},  # ReferencedRequestSequence (Type 2)
    "00741200": {"vr": "CS", "Value": ["MEDIUM"]},  # ScheduledProcedureStepPriority
    "00741202": {"vr": "LO", "Value": ["Radiology"]},  # WorklistLabel (Type 2)
    "00741204": {"vr": "LO", "Value": ["CT abdomen review"]},  # ProcedureStepLabel
    "00741210": {"vr": "SQ"},  # ScheduledProcessingParametersSequence (Type 2)
}

# Complete: the performed procedure (UnifiedProcedureStepPerformedProcedureSequence).
COMPLETE: dict[str, Any] = {
    "00741216": {
        "vr": "SQ",
        "Value": [
            {
                "00404019": {"vr": "SQ", "Value": [_CODE_TASK]},  # PerformedWorkitemCode...
                "00404028": {"vr": "SQ", "Value": [_CODE_STATION]},  # PerformedStationName...
                "00404033": {"vr": "SQ"},  # OutputInformationSequence (Type 2)
                "00404050": {"vr": "DT", "Value": ["20260101091000"]},  # ...StartDateTime
                "00404051": {"vr": "DT", "Value": ["20260101093000"]},  # ...EndDateTime
            }
        ],
    }
}

# Cancel: why the step was discontinued (ProcedureStepProgressInformationSequence).
CANCEL: dict[str, Any] = {
    "00741002": {
        "vr": "SQ",
        "Value": [
            {
                "0074100E": {  # ProcedureStepDiscontinuationReasonCodeSequence
                    "vr": "SQ",
                    "Value": [
                        {
                            "00080100": {"vr": "SH", "Value": ["110513"]},
                            "00080102": {"vr": "SH", "Value": ["DCM"]},
                            "00080104": {
                                "vr": "LO",
                                "Value": ["Discontinued for unspecified reason"],
                            },
                        }
                    ],
                }
            }
        ],
    }
}

TEMPLATES: dict[str, dict[str, Any]] = {"create": CREATE, "complete": COMPLETE, "cancel": CANCEL}


def template(name: str) -> dict[str, Any]:
    """A copy of the template ``name`` (create, complete or cancel)."""
    return copy.deepcopy(TEMPLATES[name])


def template_text(name: str) -> str:
    """The template ``name`` as indented DICOM JSON text."""
    return json.dumps(template(name), indent=1) + "\n"
