"""DICOM knowledge of the core: UIDs, Part 10 parsing, validation, attributes and frames."""
