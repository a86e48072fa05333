"""The diagnosis page's parts (allcls.serving.app is its entry): reading uploads and answering them
in one batch (analysis), the words a clinician reads (words), the model picker and what the model
is (sidebar), a cell's section (cells), a patient's decision and gallery (patient), and the report
a person files (report)."""
