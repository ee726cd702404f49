"""Datasets: the Kaggle ultrasound-nerve layout reader, splits, de-duplication and the phantom generator."""
