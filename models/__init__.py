"""Few-shot ML for FSDI: backbones, methods, calibration, training and evaluation.

Importable without FastAPI or a database.
"""
