// Names of the attributes the console shows most often (PS3.6 Section 6, the Registry of
// DICOM Data Elements); others are shown by tag only.
export const TAG_NAMES = {
  "00080005": "Specific Character Set", "00080008": "Image Type", "00080016": "SOP Class UID",
  "00080018": "SOP Instance UID", "00080020": "Study Date", "00080021": "Series Date",
  "00080030": "Study Time", "00080050": "Accession Number", "00080060": "Modality",
  "00080061": "Modalities in Study", "00080070": "Manufacturer", "00080090": "Referring Physician's Name",
  "00081030": "Study Description", "0008103E": "Series Description", "00100010": "Patient's Name",
  "00100020": "Patient ID", "00100030": "Patient's Birth Date", "00100040": "Patient's Sex",
  "00180050": "Slice Thickness", "0020000D": "Study Instance UID", "0020000E": "Series Instance UID",
  "00200010": "Study ID", "00200011": "Series Number", "00200013": "Instance Number",
  "00200032": "Image Position (Patient)", "00200037": "Image Orientation (Patient)",
  "00200052": "Frame of Reference UID", "00201206": "Number of Study Related Series",
  "00201208": "Number of Study Related Instances", "00201209": "Number of Series Related Instances",
  "00280002": "Samples per Pixel", "00280004": "Photometric Interpretation", "00280008": "Number of Frames",
  "00280010": "Rows", "00280011": "Columns", "00280030": "Pixel Spacing", "00280100": "Bits Allocated",
  "00280101": "Bits Stored", "00280102": "High Bit", "00280103": "Pixel Representation",
  "00281050": "Window Center", "00281051": "Window Width", "00281052": "Rescale Intercept",
  "00281053": "Rescale Slope", "00404005": "Scheduled Procedure Step Start DateTime",
  "00404010": "Scheduled Procedure Step Modification DateTime", "00404041": "Input Readiness State",
  "00741000": "Procedure Step State", "00741200": "Scheduled Procedure Step Priority",
  "00741202": "Worklist Label", "00741204": "Procedure Step Label", "7FE00010": "Pixel Data",
};
