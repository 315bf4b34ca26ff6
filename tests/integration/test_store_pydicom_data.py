"""Every file pydicom ships, sent in one stream, gets the outcome a careful archive gives.

Files are sent in sorted path order, so when several files share a SOP Instance UID (pydicom
ships the same image in many transfer syntaxes) the first is stored and the others get 45070.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom.data
import pytest
from pydicom import dcmread

from dicomrpc import Client
from tests.conftest import RunningServer

ROOT = Path(pydicom.data.__file__).parent / "test_files"

STORED = ("stored", 0)
WARNED = ("stored_with_warnings", 1)
SOP_CLASS = ("stored_with_warnings", 45063)
UNPARSABLE = ("failed", 272)
INVALID = ("failed", 43264)
EXISTS = ("failed", 45070)

# file -> (outcome, DICOM failure or warning reason), grouped by why.
EXPECTED: dict[str, tuple[str, int]] = {
    # Well-formed Part 10 instances in every transfer syntax pydicom reads.
    **dict.fromkeys(
        [
            "693_J2KI.dcm",
            "CT_small.dcm",
            "J2K_pixelrep_mismatch.dcm",
            "JPEG-lossy.dcm",
            "JPEG2000-embedded-sequence-delimiter.dcm",
            "MR_small.dcm",
            "SC_jpeg_no_color_transform.dcm",
            "SC_jpeg_no_color_transform_2.dcm",
            "SC_rgb_dcmtk_+eb+cr.dcm",
            "SC_rgb_dcmtk_+eb+cy+n1.dcm",
            "SC_rgb_dcmtk_+eb+cy+n2.dcm",
            "SC_rgb_dcmtk_+eb+cy+np.dcm",
            "SC_rgb_dcmtk_+eb+cy+s2.dcm",
            "SC_rgb_dcmtk_+eb+cy+s4.dcm",
            "SC_rgb_gdcm_KY.dcm",
            "SC_rgb_jpeg_dcmtk.dcm",
            "SC_rgb_jpeg_gdcm.dcm",
            "SC_rgb_jpeg_lossy_gdcm.dcm",
            "SC_rgb_small_odd.dcm",
            "SC_rgb_small_odd_jpeg.dcm",
            "examples_jpeg2k.dcm",
            "examples_overlay.dcm",
            "examples_palette.dcm",
            "examples_rgb_color.dcm",
            "examples_ybr_color.dcm",
            "image_dfl.dcm",
            "liver_1frame.dcm",
            "reportsi.dcm",
            "test-SR.dcm",
            "waveform_ecg.dcm",
            *(
                f"dicomdirtests/{p}"
                for p in [
                    "77654033/CR1/6154",
                    "77654033/CR2/6247",
                    "77654033/CR3/6278",
                    "77654033/CT2/17106",
                    "77654033/CT2/17136",
                    "77654033/CT2/17166",
                    "77654033/CT2/17196",
                    "98892001/CT2N/6293",
                    "98892001/CT2N/6924",
                    "98892001/CT5N/2062",
                    "98892001/CT5N/2392",
                    "98892001/CT5N/2693",
                    "98892001/CT5N/3023",
                    "98892001/CT5N/3353",
                    "98892003/MR1/15820",
                    "98892003/MR1/4919",
                    "98892003/MR1/5641",
                    "98892003/MR2/15970",
                    "98892003/MR2/4950",
                    "98892003/MR2/4981",
                    "98892003/MR2/5011",
                    "98892003/MR2/6273",
                    "98892003/MR2/6605",
                    "98892003/MR2/6935",
                    "98892003/MR700/4467",
                    "98892003/MR700/4528",
                    "98892003/MR700/4558",
                    "98892003/MR700/4588",
                    "98892003/MR700/4618",
                    "98892003/MR700/4648",
                    "98892003/MR700/4678",
                ]
            ),
        ],
        STORED,
    ),
    # Stored, with warnings naming attributes: no PatientID; dates written as '1997.04.24'
    # (not searchable); a data set in implicit VR under an explicit transfer syntax.
    "ExplVR_BigEnd.dcm": WARNED,
    "GDCMJ2K_TextGBR.dcm": WARNED,
    "SC_rgb_jpeg.dcm": WARNED,
    # Stored, but the data set does not match its SOP class or file meta (45063): an image SOP
    # class without Pixel Data; a file meta SOP Instance UID that differs from the data set's.
    "badVR.dcm": SOP_CLASS,
    "rtplan.dcm": SOP_CLASS,
    **dict.fromkeys(
        [
            f"dicomdirtests/TINY_ALPHA/PT000000/ST000000/SE000000/IM0000{i}"
            for i in [f"{n:02d}" for n in range(10)]
            + [f"0{c}" for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
            + [f"1{c}" for c in "0123456789ABCD"]
        ],
        SOP_CLASS,
    ),
    # Not Part 10 (no preamble and 'DICM'; bare data sets, text, JSON, gzip, ICC profile) or
    # no TransferSyntaxUID in the file meta: 272.
    **dict.fromkeys(
        [
            "ExplVR_BigEndNoMeta.dcm",
            "ExplVR_LitEndNoMeta.dcm",
            "README.txt",
            "crayons.icc",
            "dicomdirtests/README.txt",
            "dicomdirtests/TINY_ALPHA/README",
            "meta_missing_tsyntax.dcm",
            "no_meta.dcm",
            "rtplan.dump",
            "rtstruct.dcm",
            "rtstruct.dump",
            "test1.json",
            "test_PN.json",
            "zipMR.gz",
        ],
        UNPARSABLE,
    ),
    # Truncated: an element (Pixel Data, a sequence) announces more bytes than were sent: 272.
    "MR_truncated.dcm": UNPARSABLE,
    "rtplan_truncated.dcm": UNPARSABLE,
    # A required UID is missing (StudyInstanceUID here; DICOMDIRs are media directories, not
    # instances): 43264.
    **dict.fromkeys(
        [
            "JPEGLSNearLossless_08.dcm",
            "JPEGLSNearLossless_16.dcm",
            "SC_rgb_jls_lossy_line.dcm",
            "SC_rgb_jls_lossy_sample.dcm",
            "UN_sequence.dcm",
            "empty_charset_LEI.dcm",
            "nested_priv_SQ.dcm",
            "no_meta_group_length.dcm",
            "priv_SQ.dcm",
            "dicomdirtests/DICOMDIR",
            "dicomdirtests/DICOMDIR-bigEnd",
            "dicomdirtests/DICOMDIR-empty.dcm",
            "dicomdirtests/DICOMDIR-implicit",
            "dicomdirtests/DICOMDIR-nooffset",
            "dicomdirtests/DICOMDIR-nopatient",
            "dicomdirtests/DICOMDIR-reordered",
            "dicomdirtests/TINY_ALPHA/DICOMDIR",
        ],
        INVALID,
    ),
    # The same SOP Instance UID as a file sent earlier in the stream (the same image in another
    # transfer syntax, or a UID reused by another study): 45070.
    **dict.fromkeys(
        [
            "JPEG2000.dcm",
            "JPGExtended.dcm",
            "MR_small_RLE.dcm",
            "MR_small_bigendian.dcm",
            "MR_small_expb.dcm",
            "MR_small_implicit.dcm",
            "MR_small_jp2klossless.dcm",
            "MR_small_jpeg_ls_lossless.dcm",
            "MR_small_padded.dcm",
            "SC_rgb_jpeg_dcmd.dcm",
            "SC_rgb_rle.dcm",
            "SC_rgb_rle_16bit.dcm",
            "SC_rgb_rle_16bit_2frame.dcm",
            "SC_rgb_rle_2frame.dcm",
            "SC_rgb_rle_32bit.dcm",
            "SC_rgb_rle_32bit_2frame.dcm",
            "SC_rgb_small_odd_big_endian.dcm",
            "SC_ybr_full_422_uncompressed.dcm",
            "liver_expb_1frame.dcm",
            "reportsi_with_empty_number_tags.dcm",
            "rtdose.dcm",
            "rtdose_1frame.dcm",
            "rtdose_expb.dcm",
            "rtdose_expb_1frame.dcm",
            "rtdose_rle.dcm",
            "rtdose_rle_1frame.dcm",
        ],
        EXISTS,
    ),
    # A byte-identical copy of a file sent earlier (SC_jpeg_no_color_transform_2.dcm): already
    # stored, nothing changed.
    "SC_rgb_jpeg_app14_dcmd.dcm": ("already_stored", 0),
}


@pytest.mark.slow
def test_every_pydicom_file_gets_its_expected_outcome(
    server: RunningServer, client: Client
) -> None:
    files = sorted(p for p in ROOT.rglob("*") if p.is_file())
    names = [p.relative_to(ROOT).as_posix() for p in files]
    assert set(names) == set(EXPECTED), "pydicom's test files changed: update the table"

    result = client.store(files)

    got = {
        name: (r.outcome, r.failure_reason if r.outcome == "failed" else r.warning_reason)
        for name, r in zip(names, result.instances, strict=True)
    }
    assert got == {name: EXPECTED[name] for name in names}
    assert result.status == "partially_stored"

    for path, r in zip(files, result.instances, strict=True):
        if r.outcome == "failed":
            assert r.failure_message and r.failure_reason_name
            continue
        # On disk, byte-identical apart from the zeroed preamble, and indexed.
        record = server.archive.index.get_instance(
            r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid
        )
        assert record is not None and record.version == r.version
        stored = server.archive.blobs.path(record.blob_id).read_bytes()
        sent = path.read_bytes()
        assert stored[:128] == bytes(128)
        assert stored[128:] == sent[128:]
        assert r.retrieve_location == (
            f"studies/{r.study_instance_uid}/series/{r.series_instance_uid}"
            f"/instances/{r.sop_instance_uid}"
        )
        metadata = server.archive.index.get_metadata(
            r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid
        )
        assert metadata is not None
        assert metadata.attributes["00080018"].strings.values[0] == r.sop_instance_uid
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's own remarks on odd files
            has_pixels = "PixelData" in dcmread(path, force=True)
        if has_pixels:
            assert metadata.attributes["7FE00010"].bulk_data_uri.endswith("/bulkdata/7FE00010")

    counts = server.archive.index.counts()
    stored_count = sum(r.outcome.startswith("stored") for r in result.instances)
    assert counts.instances == stored_count
    assert len(list(server.archive.blobs.blob_ids())) == stored_count
