"""The authors' released checkpoints: their formats and variants (`variants`), the safe reader and layout
checks (`safe_loading`), one module per reference format (`anomalyclip_crane`, `adaclip`), the importer
(`importer`) and the model cards (`cards`). Importing this package imports nothing heavy."""
