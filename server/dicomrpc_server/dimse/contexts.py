"""The presentation contexts the archive accepts (PS3.8 §7.1.1.13, PS3.7 Annex D.3.3.4).

Storage: every storage SOP class pynetdicom knows, in every transfer syntax of the
transcoding catalogue (the native ones and each compressed one the archive stores, decodes or
writes), so that a modality sends what it holds without converting it. The requester may act
as the storage SCP on a storage context (SCP/SCU role selection, PS3.7 D.3.3.4): that is how
C-GET returns instances on the same association. Verification and the Patient and Study Root
Query/Retrieve FIND, GET and MOVE models, Storage Commitment Push Model, the Unified
Procedure Step Push, Pull and Watch SOP classes (PS3.4 CC.3.1) and the Modality Worklist FIND
model (PS3.4 K.6.1) take the native syntaxes only: their identifiers, attribute lists and
action information are small data sets. Storage
Commitment keeps the default roles whatever the requester proposes (it is the SCU, the archive
the SCP): those already let the archive send the N-EVENT-REPORT to it on its association
(PS3.4 J.3.3.1.2); role selection is for the association the archive requests itself when the
requester has left (PS3.4 J.3.3.1.3).
"""

from __future__ import annotations

from pynetdicom.presentation import (
    AllStoragePresentationContexts,
    PresentationContext,
    build_context,
)

from dicomrpc_server.retrieve.syntaxes import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    NATIVE_SYNTAXES,
    SHORT_NAMES,
    is_lossy,
)

MAX_PROPOSED = 128

# PS3.4 Annex A.4 (Verification) and C.6 (the information models' SOP classes).
VERIFICATION = "1.2.840.10008.1.1"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
# PS3.4 Annex J.3 (Storage Commitment Push Model).
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"

# PS3.4 CC.3.1 (UPS SOP classes) and K.6.1.1 (Modality Worklist Information Model - FIND).
UPS_PUSH = "1.2.840.10008.5.1.4.34.6.1"
UPS_WATCH = "1.2.840.10008.5.1.4.34.6.2"
UPS_PULL = "1.2.840.10008.5.1.4.34.6.3"
UPS_EVENT = "1.2.840.10008.5.1.4.34.6.4"
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
UPS_MODELS = (UPS_PUSH, UPS_WATCH, UPS_PULL)

FIND_MODELS = (PATIENT_ROOT_FIND, STUDY_ROOT_FIND)
GET_MODELS = (PATIENT_ROOT_GET, STUDY_ROOT_GET)
MOVE_MODELS = (PATIENT_ROOT_MOVE, STUDY_ROOT_MOVE)
PATIENT_ROOT_MODELS = frozenset({PATIENT_ROOT_FIND, PATIENT_ROOT_GET, PATIENT_ROOT_MOVE})

# The acceptor picks the syntax of each proposed context, by its own order of preference
# (pynetdicom takes the first of these the requester proposed). Lossless compressed syntaxes
# first: a modality that holds compressed images and offers them keeps them compressed, and a
# C-GET requester that takes them gets them so. Then the native ones, explicit little endian
# first. Lossy ones last: a requester offering both an uncompressed and a lossy syntax is
# never asked to compress lossily.
STORAGE_SYNTAXES: tuple[str, ...] = (
    *(uid for uid in SHORT_NAMES if uid not in NATIVE_SYNTAXES and not is_lossy(uid)),
    EXPLICIT_VR_LITTLE_ENDIAN,
    *(uid for uid in NATIVE_SYNTAXES if uid != EXPLICIT_VR_LITTLE_ENDIAN),
    *(uid for uid in SHORT_NAMES if is_lossy(uid)),
)
STORAGE_SOP_CLASSES: tuple[str, ...] = tuple(
    str(cx.abstract_syntax) for cx in AllStoragePresentationContexts
)


def _context(
    abstract_syntax: str, syntaxes: tuple[str, ...], requester_scp: bool
) -> PresentationContext:
    context = PresentationContext()
    context.abstract_syntax = abstract_syntax
    context.transfer_syntax = list(syntaxes)
    if requester_scp:
        # Accept a requester's proposal to be the storage SCP (a C-GET requester's), while a
        # plain storage SCU (no role selection item) keeps the default roles.
        context.scu_role = False
        context.scp_role = True
    return context


def move_contexts(syntaxes_by_class: dict[str, set[str]]) -> list[PresentationContext]:
    """The contexts a C-MOVE proposes to its destination, for these SOP classes and syntaxes.

    Per SOP class: one context per stored syntax (the destination may take it as stored),
    then one with explicit and implicit little endian, which every storage SCP accepts
    (PS3.5 §10.1) and the retrieve core can transcode to. At most 128 (PS3.8 §9.3.2.2 numbers
    contexts with odd bytes): the SOP classes past them are not proposed.
    """
    contexts: list[PresentationContext] = []
    fallback = [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN]
    for sop_class, syntaxes in syntaxes_by_class.items():
        wanted = [[s] for s in sorted(syntaxes)]
        if not set(fallback) <= syntaxes:
            wanted.append(fallback)
        if len(contexts) + len(wanted) > MAX_PROPOSED:
            break
        contexts.extend(build_context(sop_class, transfer) for transfer in wanted)
    return contexts


def supported_contexts() -> list[PresentationContext]:
    """Every presentation context an association may negotiate."""
    native = tuple(NATIVE_SYNTAXES)
    contexts = [_context(VERIFICATION, native, False)]
    contexts.extend(
        _context(uid, native, False)
        for uid in (
            *FIND_MODELS,
            *GET_MODELS,
            *MOVE_MODELS,
            STORAGE_COMMITMENT,
            *UPS_MODELS,
            MODALITY_WORKLIST_FIND,
        )
    )
    contexts.extend(_context(uid, STORAGE_SYNTAXES, True) for uid in STORAGE_SOP_CLASSES)
    return contexts
