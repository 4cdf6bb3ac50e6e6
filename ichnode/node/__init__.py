"""The DICOM node: C-STORE SCP, workers, study monitor, outbox."""
