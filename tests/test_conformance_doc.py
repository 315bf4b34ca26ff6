"""docs/conformance.md: its generated tables are what the code gives, and say what it does."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomrpc_server import conformance
from dicomrpc_server.dicom.attributes import ALL_ATTRIBUTES, NESTED_ATTRIBUTES
from dicomrpc_server.dimse import contexts
from dicomrpc_server.ups import index as ups_index

DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "conformance.md"


@pytest.fixture(scope="module")
def text() -> str:
    return DOCUMENT.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def blocks(text: str) -> dict[str, str]:
    return conformance.blocks(text)


def test_every_table_is_in_the_document(blocks: dict[str, str]) -> None:
    assert sorted(blocks) == sorted(conformance.TABLES)


@pytest.mark.parametrize("name", sorted(conformance.TABLES))
def test_generated_table_is_current(blocks: dict[str, str], name: str) -> None:
    assert blocks.get(name) == conformance.TABLES[name](), (
        f"docs/conformance.md: the generated table {name!r} differs from the code; "
        f"regenerate it with `{conformance.REGENERATE}`"
    )


def test_ct_image_storage_is_accepted_with_its_syntaxes(blocks: dict[str, str]) -> None:
    assert (
        "| CT Image Storage | `1.2.840.10008.5.1.4.1.1.2` | SCP; SCU in C-GET / C-MOVE |"
        in blocks["storage-sop-classes"]
    )
    syntaxes = blocks["storage-transfer-syntaxes"]
    for uid in (
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.5",
    ):
        assert f"`{uid}`" in syntaxes
    # Explicit VR Little Endian comes before every lossy syntax in the acceptor's preference.
    order = [line.split("|")[3].strip(" `") for line in syntaxes.splitlines()[2:]]
    assert order.index("1.2.840.10008.1.2.1") < order.index("1.2.840.10008.1.2.4.50")


def test_statuses_rows(blocks: dict[str, str]) -> None:
    store = blocks["store-statuses"]
    assert (
        "| no space left on the archive's storage (`STORAGE_FULL`) | 0xA700 Refused: Out of "
        "resources |" in store
    )
    assert "| SOP Instance UID already stored with other bytes (45070) | 0x0111" in store
    ups = blocks["ups-statuses"]
    assert "| Transaction UID missing | 0xC301 Transaction UID incorrect | 400 |" in ups
    assert "| Transaction UID wrong | 0xC301 Transaction UID incorrect | 409 |" in ups
    assert "| no such workitem | 0xC307 No such workitem | 404 |" in ups


def test_services_and_contexts_agree() -> None:
    """Every non-storage context the acceptor offers is in the overview, and nothing else."""
    offered = {
        str(cx.abstract_syntax)
        for cx in contexts.supported_contexts()
        if str(cx.abstract_syntax) not in contexts.STORAGE_SOP_CLASSES
    }
    listed = {service.uid for service in conformance.SERVICES}
    assert listed - {contexts.UPS_EVENT} == offered


def test_every_searchable_attribute_is_listed(blocks: dict[str, str]) -> None:
    table = blocks["search-attributes"]
    for attribute in ALL_ATTRIBUTES:
        assert f"| {attribute.keyword} |" in table
    for nested in NESTED_ATTRIBUTES:
        assert f"{nested.sequence.keyword} > {nested.leaf.keyword}" in table
    assert "| Study | ModalitiesInStudy |" in table
    for key in ups_index.MATCHING_KEYS:
        assert f"| {key.keyword} |" in blocks["workitem-keys"]


def test_stale_table_is_found_and_regenerated(text: str) -> None:
    edited = text.replace("| CT Image Storage |", "| CT Image Storage (edited) |")
    assert conformance.stale(edited) == ["storage-sop-classes"]
    assert conformance.regenerate(edited) == text


def test_unknown_block_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown generated block"):
        conformance.regenerate("<!-- generated: nothing -->\n<!-- end generated -->")
