"""Distillation: IB-BERT teacher -> MobileBERT student (progressive transfer, pretraining distillation)."""
