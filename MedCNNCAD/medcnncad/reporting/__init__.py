"""Case outputs (label maps, probability maps, report.json, overlays), HTML/PDF reports, DICOM SEG."""
