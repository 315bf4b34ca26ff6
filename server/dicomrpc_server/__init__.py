"""The dicomrpc server: a DICOM archive core with gRPC and DICOMweb adapters."""

__version__ = "0.1.0"
